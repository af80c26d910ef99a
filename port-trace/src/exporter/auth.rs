//! HTTP basic auth against bcrypt hashes (`basic_auth_users`). A bcrypt check costs tens of
//! milliseconds by design, so each outcome is cached under a SHA-256 of the credentials and the
//! hash (a scrape every second costs one bcrypt, not one per scrape), and checks run one at a
//! time off the event loop (wrong passwords cannot eat the cores).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hyper::header::HeaderValue;
use tokio::sync::Semaphore;

/// Outcomes remembered; the cache starts over when full, which bounds its memory.
const CACHE_ENTRIES: usize = 256;

type Digest = [u8; 32];

#[derive(Debug)]
pub struct BasicAuth {
    /// Username to bcrypt hash, checked at load (see web_config).
    users: BTreeMap<String, String>,
    cache: Mutex<HashMap<Digest, bool>>,
    checks: Semaphore,
}

/// `user:password` from an `Authorization: Basic ...` header.
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = header.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn digest(user: &str, hash: &str, password: &str) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Lengths first, so no two different triples share an input.
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            cache: Mutex::new(HashMap::new()),
            checks: Semaphore::new(1),
        }
    }

    /// Whether the request's `Authorization` header names a user with the right password.
    pub async fn allows(self: &Arc<Self>, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        // An unknown user still costs a bcrypt (against a real hash, so at the same cost): the
        // answer's timing does not tell which usernames exist.
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => match self.users.values().next() {
                Some(h) => (h.clone(), false),
                None => return false,
            },
        };
        let key = digest(&user, &hash, &password);
        if let Some(&ok) = self.cache.lock().ok().as_ref().and_then(|c| c.get(&key)) {
            return ok && known;
        }
        let Ok(_turn) = self.checks.acquire().await else {
            return false;
        };
        // bcrypt compares in constant time.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(key, ok);
        }
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_password: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(user_password))).unwrap()
    }

    #[tokio::test]
    async fn right_password_only_and_cached() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Arc::new(BasicAuth::new([("prom".to_string(), hash)].into()));
        assert!(auth.allows(Some(&basic("prom:s3cret"))).await);
        assert!(!auth.allows(Some(&basic("prom:wrong"))).await);
        assert!(!auth.allows(Some(&basic("other:s3cret"))).await);
        assert!(!auth.allows(None).await);
        assert!(
            !auth
                .allows(Some(&HeaderValue::from_static("Bearer x")))
                .await
        );
        assert_eq!(auth.cache.lock().unwrap().len(), 3);
        // Cached: the same answers again.
        assert!(auth.allows(Some(&basic("prom:s3cret"))).await);
        assert!(!auth.allows(Some(&basic("other:s3cret"))).await);
        assert!(
            auth.allows(Some(
                &HeaderValue::from_str(&format!("basic  {}", STANDARD.encode("prom:s3cret")))
                    .unwrap()
            ))
            .await
        );
    }
}
