//! Error text for people: an error with every cause behind it.

/// `outer: cause: root cause`, the way `anyhow`'s `{:#}` prints a chain, for places that keep
/// an error as text (a recording's namespace note) or print it without `anyhow`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
