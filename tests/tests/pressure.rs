//! Range pressure against the kernel's real tables: a network namespace whose ephemeral range
//! is narrowed to a few ports, filled by connect(), read back through sock_diag and sysctls,
//! and compared with `ss`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use port_trace::netns::{NetnsRef, dump_sockets, read_range};
use port_trace::pressure::{
    self, Proto, SockState, SocketRecord, connect_pressure, listeners_in_range,
};
use port_trace_tests::{Netns, SERIAL, require_root};
use socket2::{Domain, Socket, Type};

const SERVER_PORT: u16 = 5000;

fn server() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT))
}

/// `ss -tan` rows (state, local, peer) of `ns`.
fn ss_tcp(ns: &Netns) -> Vec<(String, String, String)> {
    ns.exec(&["ss", "-Htan"])
        .expect("ss -tan")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4].to_string()))
        })
        .collect()
}

/// connect() to `to` until the range is exhausted (EADDRNOTAVAIL); at most `max` tries.
fn connect_until_exhausted(to: SocketAddr, max: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..max {
        match TcpStream::connect(to) {
            Ok(s) => streams.push(s),
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL),
                    "connect #{} failed with {e}, expected EADDRNOTAVAIL",
                    streams.len() + 1
                );
                return streams;
            }
        }
    }
    panic!("{max} connects to {to} all succeeded: the range was not exhausted");
}

fn local_ports(streams: &[TcpStream]) -> Vec<u16> {
    let mut ports: Vec<u16> = streams
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    ports.sort_unstable();
    ports
}

fn toward_server(sockets: &[SocketRecord]) -> Vec<&SocketRecord> {
    sockets
        .iter()
        .filter(|s| {
            s.proto == Proto::Tcp && s.remote_addr == server().ip() && s.remote_port == SERVER_PORT
        })
        .collect()
}

#[test]
fn exhausted_destination_reads_full() {
    if !require_root("exhausted_destination_reads_full") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let host_before = read_range(&NetnsRef::Current).expect("host range");

    let ns = Netns::new().expect("create network namespace");
    ns.set_port_range(40000, 40003)
        .expect("set ip_local_port_range");
    let range = read_range(&NetnsRef::named(&ns.name)).expect("namespace range");
    assert_eq!((range.low, range.high, range.usable), (40000, 40003, 4));
    assert_eq!(
        read_range(&NetnsRef::Current).expect("host range"),
        host_before,
        "the host's own range must be unchanged"
    );
    // /proc/PID/ns/net of a thread is the same namespace reached another way.
    let by_tid = ns
        .within(|| {
            let tid = nix::unistd::gettid().as_raw() as u32;
            read_range(&NetnsRef::Path(
                format!("/proc/self/task/{tid}/ns/net").into(),
            ))
        })
        .expect("namespace thread");
    assert_eq!(by_tid.expect("range via /proc/.../ns/net"), range);

    let (listener, clients) = ns
        .within(|| {
            let listener = TcpListener::bind(server()).expect("listen on 127.0.0.1:5000");
            let clients = connect_until_exhausted(server(), 8);
            (listener, clients)
        })
        .expect("namespace thread");
    assert_eq!(local_ports(&clients), vec![40000, 40001, 40002, 40003]);

    let sockets = dump_sockets(&NetnsRef::named(&ns.name)).expect("sock_diag dump");
    let ours = toward_server(&sockets);
    assert_eq!(ours.len(), 4, "sock_diag: {sockets:#?}");
    assert!(ours.iter().all(|s| s.state == SockState::Established));
    let ss_rows: Vec<_> = ss_tcp(&ns)
        .into_iter()
        .filter(|(_, _, peer)| peer == "127.0.0.1:5000")
        .collect();
    assert_eq!(ss_rows.len(), ours.len(), "ss -tan disagrees: {ss_rows:?}");
    for (state, local, _) in &ss_rows {
        assert_eq!(state, "ESTAB");
        let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            ours.iter().any(|s| s.local_port == port),
            "ss row {local} not in dump"
        );
    }

    let p = connect_pressure(&range, &sockets);
    let dest = p
        .iter()
        .find(|d| d.daddr == server().ip() && d.dport == SERVER_PORT)
        .expect("127.0.0.1:5000 listed");
    assert_eq!((dest.in_use, dest.usable), (4, 4));
    assert_eq!(dest.pressure, 1.0);
    assert_eq!(p[0], *dest, "the full destination sorts first");
    assert_eq!(pressure::bind_pressure(&range, &sockets, Proto::Tcp), 1.0);
    assert_eq!(pressure::bind_pressure(&range, &sockets, Proto::Udp), 0.0);
    assert!(listeners_in_range(&range, &sockets).is_empty());

    // Active close from the clients: their ports go to TIME_WAIT and still count.
    let accepted: Vec<TcpStream> = (0..4).map(|_| listener.accept().unwrap().0).collect();
    drop(clients);
    drop(accepted);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = dump_sockets(&NetnsRef::named(&ns.name)).expect("sock_diag dump");
        let ours = toward_server(&sockets);
        if ours.len() == 4 && ours.iter().all(|s| s.state == SockState::TimeWait) {
            let dest = connect_pressure(&range, &sockets);
            assert_eq!((dest[0].in_use, dest[0].pressure), (4, 1.0));
            let tw = ss_tcp(&ns)
                .into_iter()
                .filter(|(st, _, peer)| st == "TIME-WAIT" && peer == "127.0.0.1:5000")
                .count();
            assert_eq!(tw, 4, "ss -tan shows the TIME_WAIT sockets too");
            break;
        }
        assert!(Instant::now() < deadline, "no TIME_WAIT: {ours:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listener_inside_range_is_reported_and_skipped() {
    if !require_root("listener_inside_range_is_reported_and_skipped") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new().expect("create network namespace");
    // An even number of ports: connect() rounds its scan length down to even, so with an odd
    // count which ports it can reach depends on the hashed offset.
    ns.set_port_range(40000, 40005)
        .expect("set ip_local_port_range");
    let range = read_range(&NetnsRef::named(&ns.name)).expect("namespace range");
    assert_eq!((range.low, range.high, range.usable), (40000, 40005, 6));

    let (_listener, _inner, _bound, _udp, clients) = ns
        .within(|| {
            let listener = TcpListener::bind(server()).expect("listen on 127.0.0.1:5000");
            // A listener and a bound-only TCP socket inside the range: connect() must skip both.
            let inner = TcpListener::bind((Ipv4Addr::LOCALHOST, 40002)).expect("listen on 40002");
            let bound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            bound
                .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 40004)).into())
                .expect("bind 40004");
            // A bound UDP socket in the range: a hazard for UDP, no obstacle for TCP connect().
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 40000)).expect("udp bind 40000");
            let clients = connect_until_exhausted(server(), 8);
            (listener, inner, bound, udp, clients)
        })
        .expect("namespace thread");
    assert_eq!(local_ports(&clients), vec![40000, 40001, 40003, 40005]);

    let sockets = dump_sockets(&NetnsRef::named(&ns.name)).expect("sock_diag dump");
    let hazards: Vec<(Proto, SockState, u16)> = listeners_in_range(&range, &sockets)
        .iter()
        .map(|s| (s.proto, s.state, s.local_port))
        .collect();
    assert_eq!(
        hazards,
        vec![
            (Proto::Udp, SockState::Close, 40000),
            (Proto::Tcp, SockState::Listen, 40002),
            (Proto::Tcp, SockState::BoundInactive, 40004),
        ],
        "sock_diag: {sockets:#?}"
    );
    let ss_listen = ns.exec(&["ss", "-Htln"]).expect("ss -tln");
    assert!(
        ss_listen.contains("127.0.0.1:40002"),
        "ss -tln: {ss_listen}"
    );

    let p = connect_pressure(&range, &sockets);
    let dest = p
        .iter()
        .find(|d| d.daddr == server().ip() && d.dport == SERVER_PORT)
        .expect("127.0.0.1:5000 listed");
    assert_eq!((dest.in_use, dest.usable), (4, 4));
    assert_eq!(dest.pressure, 1.0);
    let ss_estab = ss_tcp(&ns)
        .into_iter()
        .filter(|(st, _, peer)| st == "ESTAB" && peer == "127.0.0.1:5000")
        .count();
    assert_eq!(ss_estab as u32, dest.in_use, "ss -tan agrees on in_use");
    assert!((pressure::bind_pressure(&range, &sockets, Proto::Udp) - 1.0 / 6.0).abs() < 1e-12);
}
