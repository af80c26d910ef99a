//! `--web.config.file`: TLS and basic auth in the Prometheus exporter-toolkit format
//! (docs/metrics.md). Every value is checked here, when the file is loaded at start and on
//! each reload; a file that fails leaves the running settings in place.
//!
//! Supported: `tls_server_config` (`cert_file`/`cert`, `key_file`/`key`, `client_auth_type`
//! `NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert` with
//! `client_ca_file`/`client_ca`, `min_version`, `max_version`, `prefer_server_cipher_suites`),
//! `http_server_config.http2` (accepted; the server speaks HTTP/1.1) and `basic_auth_users`.
//! The toolkit's other keys are refused by name rather than silently ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;

use super::{
    auth::BasicAuth,
    tls::{self, ClientAuth, Pem, TlsError, Version},
};

/// What the server runs with: the default is plain HTTP without auth.
#[derive(Debug, Default, Clone)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<Arc<BasicAuth>>,
    /// The files it was read from, to notice a change.
    sources: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config {}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("web config {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("web config {}: cannot read {}", path.display(), file.display())]
    ReadFile {
        path: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config {}: tls_server_config", path.display())]
    Tls {
        path: PathBuf,
        /// Boxed: rustls' errors are large and this is the rare path.
        #[source]
        source: Box<TlsError>,
    },
}

/// The file's shape; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    // Known to the toolkit but not implemented here: refused by name.
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; the server speaks HTTP/1.1 only.
    #[allow(dead_code, reason = "read so that the toolkit's key is accepted")]
    http2: Option<bool>,
    headers: Option<serde_yaml_ng::Value>,
}

fn version(s: &str) -> Result<Version, String> {
    match s {
        "TLS12" => Ok(Version::Tls12),
        "TLS13" => Ok(Version::Tls13),
        "TLS10" | "TLS11" => Err(format!("{s} is not supported: use TLS12 or TLS13")),
        _ => Err(format!("unknown TLS version {s:?}: use TLS12 or TLS13")),
    }
}

/// A `$2a$`/`$2b$`/`$2y$` bcrypt hash with a cost bcrypt accepts.
fn check_bcrypt(user: &str, hash: &str) -> Result<(), String> {
    let ok = hash
        .parse::<bcrypt::HashParts>()
        .is_ok_and(|p| (4..=31).contains(&p.get_cost()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "basic_auth_users: the password of {user:?} is not a bcrypt hash (htpasswd -nBC 10 \"\" makes one)"
        ))
    }
}

impl WebConfig {
    /// Reads and checks `path` and the files it names (relative to its directory).
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.into(),
            source,
        })?;
        // An empty file is valid: plain HTTP, no auth.
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|source| WebConfigError::Yaml {
                path: path.into(),
                source,
            })?
        };
        let invalid = |reason: String| WebConfigError::Invalid {
            path: path.into(),
            reason,
        };
        let mut sources = vec![path.to_path_buf()];
        let dir = path.parent().unwrap_or(Path::new("."));
        // Reads a named file, or takes inline PEM; exactly one of the two.
        let mut pem = |inline: &Option<String>,
                       file: &Option<PathBuf>,
                       name: &str|
         -> Result<Option<Pem>, WebConfigError> {
            match (inline, file) {
                (Some(_), Some(_)) => Err(invalid(format!(
                    "tls_server_config: give {name} or {name}_file, not both"
                ))),
                (Some(text), None) => Ok(Some(Pem {
                    origin: name.into(),
                    text: text.clone().into_bytes(),
                })),
                (None, Some(f)) => {
                    let f = dir.join(f);
                    let text = std::fs::read(&f).map_err(|source| WebConfigError::ReadFile {
                        path: path.into(),
                        file: f.clone(),
                        source,
                    })?;
                    sources.push(f.clone());
                    Ok(Some(Pem {
                        origin: f.display().to_string(),
                        text,
                    }))
                }
                (None, None) => Ok(None),
            }
        };

        let tls = match &file.tls_server_config {
            None => None,
            Some(t) => {
                for (key, given) in [
                    ("client_allowed_sans", t.client_allowed_sans.is_some()),
                    ("cipher_suites", t.cipher_suites.is_some()),
                    ("curve_preferences", t.curve_preferences.is_some()),
                ] {
                    if given {
                        return Err(invalid(format!(
                            "tls_server_config.{key} is not supported by port-trace"
                        )));
                    }
                }
                let cert = pem(&t.cert, &t.cert_file, "cert")?.ok_or_else(|| {
                    invalid("tls_server_config: missing cert_file (or cert)".into())
                })?;
                let key = pem(&t.key, &t.key_file, "key")?.ok_or_else(|| {
                    invalid("tls_server_config: missing key_file (or key)".into())
                })?;
                let ca = pem(&t.client_ca, &t.client_ca_file, "client_ca")?;
                let client_auth = match (t.client_auth_type.as_deref(), ca) {
                    (None | Some("NoClientCert"), None) => ClientAuth::None,
                    (None | Some("NoClientCert"), Some(_)) => {
                        return Err(invalid(
                            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert".into(),
                        ));
                    }
                    (Some("VerifyClientCertIfGiven"), Some(ca)) => ClientAuth::VerifyIfGiven { ca },
                    (Some("RequireAndVerifyClientCert"), Some(ca)) => ClientAuth::Require { ca },
                    (
                        Some(k @ ("VerifyClientCertIfGiven" | "RequireAndVerifyClientCert")),
                        None,
                    ) => {
                        return Err(invalid(format!(
                            "tls_server_config: client_auth_type {k} needs client_ca_file"
                        )));
                    }
                    (
                        Some(
                            k
                            @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert"),
                        ),
                        _,
                    ) => {
                        return Err(invalid(format!(
                            "tls_server_config: client_auth_type {k} does not verify certificates and is not supported: use RequireAndVerifyClientCert"
                        )));
                    }
                    (Some(k), _) => {
                        return Err(invalid(format!(
                            "tls_server_config: unknown client_auth_type {k:?}"
                        )));
                    }
                };
                let version = |v: &Option<String>, default| match v {
                    Some(s) => version(s).map_err(|e| invalid(format!("tls_server_config: {e}"))),
                    None => Ok(default),
                };
                let settings = tls::Settings {
                    cert,
                    key,
                    client_auth,
                    min_version: version(&t.min_version, Version::Tls12)?,
                    max_version: version(&t.max_version, Version::Tls13)?,
                    prefer_server_order: t.prefer_server_cipher_suites.unwrap_or(true),
                };
                Some(
                    tls::server_config(&settings).map_err(|source| WebConfigError::Tls {
                        path: path.into(),
                        source: Box::new(source),
                    })?,
                )
            }
        };
        if let Some(h) = &file.http_server_config
            && h.headers.is_some()
        {
            return Err(invalid(
                "http_server_config.headers is not supported by port-trace".into(),
            ));
        }
        if file.rate_limit.is_some() {
            return Err(invalid("rate_limit is not supported by port-trace".into()));
        }
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => {
                for (user, hash) in &users {
                    if user.contains(':') {
                        return Err(invalid(format!(
                            "basic_auth_users: username {user:?} contains ':', which basic auth cannot send"
                        )));
                    }
                    check_bcrypt(user, hash).map_err(invalid)?;
                }
                Some(Arc::new(BasicAuth::new(users)))
            }
            _ => None,
        };
        Ok(Self { tls, auth, sources })
    }

    /// The modification times of the files it was read from now: when they differ from an
    /// earlier look, a file changed (an edit, a rotated certificate).
    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.sources.iter().map(|p| modified(p)).collect()
    }

    /// `https` or `http`, for the startup line.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, String> {
        let dir = std::env::temp_dir().join(format!(
            "pt-web-config-{}-{:x}",
            std::process::id(),
            ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[0]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("web.yml");
        std::fs::write(&p, text).unwrap();
        let r = WebConfig::load(&p).map_err(|e| crate::errors::chain(&e));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn empty_means_plain_http_without_auth() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && c.auth.is_none());
        assert_eq!(c.scheme(), "http");
        let c = load("basic_auth_users: {}\nhttp_server_config:\n  http2: false\n").unwrap();
        assert!(c.auth.is_none());
    }

    #[test]
    fn basic_auth_users_need_bcrypt_hashes() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let c = load(&format!("basic_auth_users:\n  prom: '{hash}'\n")).unwrap();
        assert!(c.auth.is_some() && c.tls.is_none());
        let err = load("basic_auth_users:\n  prom: plaintext\n").unwrap_err();
        assert!(err.contains("not a bcrypt hash"), "{err}");
        let err = load(&format!("basic_auth_users:\n  'a:b': '{hash}'\n")).unwrap_err();
        assert!(err.contains("contains ':'"), "{err}");
    }

    #[test]
    fn bad_files_give_one_sentence() {
        for (text, says) in [
            ("tls_server_config:\n  cert: x\n", "missing key_file"),
            (
                "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
                "cannot read",
            ),
            (
                "tls_server_config:\n  cert: x\n  cert_file: y\n  key: z\n",
                "not both",
            ),
            (
                "tls_server_config:\n  cert: x\n  key: y\n  cipher_suites: [a]\n",
                "cipher_suites is not supported",
            ),
            (
                "tls_server_config:\n  cert: x\n  key: y\n  client_auth_type: RequireAnyClientCert\n",
                "does not verify",
            ),
            (
                "tls_server_config:\n  cert: x\n  key: y\n  client_auth_type: RequireAndVerifyClientCert\n",
                "needs client_ca_file",
            ),
            (
                "tls_server_config:\n  cert: x\n  key: y\n  min_version: TLS10\n",
                "not supported",
            ),
            (
                "tls_server_config:\n  cert: x\n  key: y\n",
                "no certificate in it",
            ),
            ("basic_auth_user: {}\n", "unknown field"),
            (
                "rate_limit:\n  interval: 1s\n",
                "rate_limit is not supported",
            ),
            ("tls_server_config: [\n", "web config"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(says) && !err.contains('\n'), "{text}: {err}");
        }
    }
}
