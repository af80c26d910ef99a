//! Issue 11 row 10: `serve --web.config.file` with TLS and basic auth, checked with curl and
//! with a real Prometheus scraping over TLS with basic auth; a reload changes the password, a
//! bad file keeps the old settings.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use port_trace_tests::{
    SERIAL, TraceProcess, require_root,
    scrape::{Prometheus, free_port},
};

/// A self-signed certificate for 127.0.0.1 (openssl's CLI; the daemon itself uses rustls).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=port-trace-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn web_config(user: &str, password: &str) -> String {
    // Cost 6 keeps the debug build's check short; the format is the same as htpasswd's -C 10.
    let hash = bcrypt::hash(password, 6).unwrap();
    format!(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  {user}: '{hash}'\n"
    )
}

/// curl's HTTP status for `url` (0 when no HTTP answer came), with `extra` arguments.
fn curl(url: &str, cert: &Path, extra: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"])
        .arg("--cacert")
        .arg(cert)
        .args(extra)
        .arg(url)
        .output()
        .expect("curl (Debian package curl)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// curl's status until it is `want` (a reload is asynchronous); bounded.
fn curl_until(want: u16, url: &str, cert: &Path, extra: &[&str]) -> u16 {
    let mut got = 0;
    for _ in 0..100 {
        got = curl(url, cert, extra);
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    got
}

#[test]
fn tls_and_basic_auth_with_curl_and_prometheus() {
    if !require_root("tls_and_basic_auth_with_curl_and_prometheus") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("pt-web-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, _key) = self_signed(&dir);
    let web = dir.join("web.yml");
    std::fs::write(&web, web_config("prom", "s3cret")).unwrap();

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let listen = addr.to_string();
    let web_arg = web.display().to_string();
    let daemon =
        TraceProcess::spawn(&["serve", "--listen", &listen, "--web.config.file", &web_arg])
            .expect("start port-trace serve with TLS");
    assert!(
        daemon.banner.contains(&format!("https://{addr}/metrics")),
        "{}",
        daemon.banner
    );
    let metrics = format!("https://{addr}/metrics");
    assert_eq!(curl(&metrics, &cert, &["-u", "prom:s3cret"]), 200);
    assert_eq!(curl(&metrics, &cert, &["-u", "prom:wrong"]), 401);
    assert_eq!(curl(&metrics, &cert, &["-u", "nobody:s3cret"]), 401);
    assert_eq!(curl(&metrics, &cert, &[]), 401);
    // The 401 asks for basic auth.
    let head = Command::new("curl")
        .args(["-s", "-i", "-m", "10", "--cacert"])
        .arg(&cert)
        .args(["-u", "prom:wrong", &metrics])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.contains("www-authenticate: basic"), "{head}");
    // Liveness probes need TLS but no password.
    assert_eq!(curl(&format!("https://{addr}/healthz"), &cert, &[]), 200);
    // Plain HTTP gets no HTTP answer at all.
    assert_eq!(
        curl(
            &format!("http://{addr}/metrics"),
            &cert,
            &["-u", "prom:s3cret"]
        ),
        0
    );

    // A real Prometheus scrapes it over TLS with basic auth: the target is up.
    let ca = cert.display();
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prom\n      password: s3cret\n"
    );
    let prom = Prometheus::start_with("web-config", addr, "groups: []\n", &job);
    let mut up = None;
    for _ in 0..300 {
        let v = prom.query("up{job=\"port-trace\"}");
        up = v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string);
        if up.as_deref() == Some("1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        up.as_deref(),
        Some("1"),
        "Prometheus never scraped the daemon over TLS"
    );
    let built = prom.query("port_trace_build_info");
    assert!(
        built["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{built}"
    );
    drop(prom);

    // A bad file keeps the old settings; a good one changes the password.
    std::fs::write(&web, "basic_auth_users:\n  prom: plaintext\n").unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(curl(&metrics, &cert, &["-u", "prom:s3cret"]), 200);
    std::fs::write(&web, web_config("prom", "n3w")).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eq!(curl_until(200, &metrics, &cert, &["-u", "prom:n3w"]), 200);
    assert_eq!(curl(&metrics, &cert, &["-u", "prom:s3cret"]), 401);

    let (_, stderr) = daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("serve exits 0 on SIGTERM");
    assert!(
        stderr.contains("keeping the old web config") && stderr.contains("not a bcrypt hash"),
        "{stderr}"
    );
    assert!(stderr.contains("web config reloaded"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_web_config_is_refused_at_start_with_one_sentence() {
    let dir = std::env::temp_dir().join(format!("pt-web-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: k.pem\n",
    )
    .unwrap();
    let out = Command::new(port_trace_tests::port_trace_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--web.config.file"])
        .arg(&web)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An error exit, not a panic (101).
    assert!(
        out.status.code().is_some_and(|c| c != 0 && c != 101),
        "{stderr}"
    );
    assert!(
        stderr.contains("cannot read")
            && stderr.contains("missing.pem")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}
