//! The metadata server on 127.0.0.1:0 against a raw TCP client: keep-alive, live content
//! changes, peer filtering, HEAD and 405, and abusive clients (garbage, oversized, slow, idle)
//! while a good client still gets answers within a deadline.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuvirt_netbind::metadata::{AllowedPeers, Limits, Metadata, Server};
use tokio::sync::watch;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA+1 alice@example";
const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+2 bob@example";
/// How long any single exchange may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn metadata(key: &str) -> Metadata {
    Metadata {
        uuid: "5d307ca9-b3ef-428c-8861-06e72d69f223".into(),
        instance_id: "testvm.default".into(),
        name: "testvm".into(),
        namespace: "default".into(),
        hostname: "testvm".into(),
        local_ipv4: Some(Ipv4Addr::new(10, 0, 2, 2)),
        public_keys: vec![("mykey".into(), key.into())],
        user_data: Some(b"#cloud-config\n".to_vec()),
        ..Metadata::default()
    }
}

/// A server on its own runtime; dropping the harness stops it.
struct Harness {
    addr: SocketAddr,
    content: Option<watch::Sender<Arc<Metadata>>>,
    served: Option<tokio::task::JoinHandle<Result<(), kuvirt_netbind::metadata::Error>>>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn start(allowed: AllowedPeers, limits: Limits) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap()
            .with_limits(limits);
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (tx, rx) = watch::channel(Arc::new(metadata(KEY_A)));
        let served = runtime.spawn(server.run(rx, allowed));
        Self {
            addr,
            content: Some(tx),
            served: Some(served),
            runtime,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.addr, DEADLINE).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        stream
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Reads one response; `head_only` for answers to HEAD. `None` on EOF before a status line.
fn read_response(stream: &mut TcpStream, head_only: bool) -> Option<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => buf.push(byte[0]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return None,
            Err(err) => panic!("reading a response head: {err}"),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = response.header("content-length").unwrap().parse().unwrap();
    if !head_only {
        response.body = vec![0; length];
        stream.read_exact(&mut response.body).unwrap();
    }
    Some(response)
}

fn get(stream: &mut TcpStream, path: &str) -> Response {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    )
    .unwrap();
    read_response(stream, false).unwrap()
}

/// Whether the server closed the connection (EOF or reset) before the deadline.
fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => err.kind() == ErrorKind::ConnectionReset,
    }
}

#[test]
fn keep_alive_serves_both_layouts() {
    let h = Harness::start(AllowedPeers::Any, Limits::default());
    let mut s = h.connect();
    let r = get(&mut s, "/latest/meta-data/instance-id");
    assert_eq!((r.status, r.text()), (200, "testvm.default"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = get(&mut s, "/openstack/latest/meta_data.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["uuid"], "5d307ca9-b3ef-428c-8861-06e72d69f223");
    assert_eq!(doc["public_keys"]["mykey"], KEY_A);
    // two pipelined requests in one write
    s.write_all(
        b"GET /latest/meta-data/hostname HTTP/1.1\r\n\r\nGET /latest/user-data HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().text(), "testvm");
    assert_eq!(
        read_response(&mut s, false).unwrap().text(),
        "#cloud-config\n"
    );
    // HTTP/1.0 without keep-alive gets one answer and a close
    let mut s = h.connect();
    s.write_all(b"GET /latest/meta-data/public-keys/ HTTP/1.0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.text(), "0=mykey");
    assert!(closed(&mut s));
}

#[test]
fn key_change_is_live() {
    let h = Harness::start(AllowedPeers::Any, Limits::default());
    let mut s = h.connect();
    let path = "/latest/meta-data/public-keys/0/openssh-key";
    assert_eq!(get(&mut s, path).text(), KEY_A);
    h.content
        .as_ref()
        .unwrap()
        .send(Arc::new(metadata(KEY_B)))
        .unwrap();
    // the same connection and a new one both see the new key
    assert_eq!(get(&mut s, path).text(), KEY_B);
    let doc = get(&mut h.connect(), "/openstack/2018-08-27/meta_data.json");
    let doc: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(doc["keys"][0]["data"], KEY_B);
}

#[test]
fn only_allowed_peers_get_answers() {
    let elsewhere = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));
    let h = Harness::start(AllowedPeers::only(elsewhere), Limits::default());
    let mut s = h.connect();
    let r = get(&mut s, "/latest/meta-data/instance-id");
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("testvm"));
    assert!(closed(&mut s));

    let h = Harness::start(
        AllowedPeers::Only(vec![elsewhere, Ipv4Addr::LOCALHOST.into()]),
        Limits::default(),
    );
    assert_eq!(
        get(&mut h.connect(), "/latest/meta-data/hostname").status,
        200
    );
}

#[test]
fn head_and_other_methods() {
    let h = Harness::start(AllowedPeers::Any, Limits::default());
    let mut s = h.connect();
    s.write_all(b"HEAD /openstack/latest/meta_data.json HTTP/1.1\r\n\r\n")
        .unwrap();
    let head = read_response(&mut s, true).unwrap();
    assert_eq!(head.status, 200);
    // no body follows: the next response starts right after the head
    let r = get(&mut s, "/openstack/latest/meta_data.json");
    assert_eq!(r.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    s.write_all(b"DELETE /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // a request with a body is answered, then the connection closes (bodies are not read)
    let mut s = h.connect();
    s.write_all(b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&mut s));

    let mut s = h.connect();
    assert_eq!(get(&mut s, "/latest/../openstack").status, 400);
    assert_eq!(get(&mut s, "/nothing/here").status, 404);
}

#[test]
fn bad_clients_get_an_error_and_a_close() {
    let limits = Limits {
        read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let h = Harness::start(AllowedPeers::Any, limits);
    let cases: [(&[u8], u16); 4] = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: y\r\nno colon here\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        // a slow client: a partial head, then nothing
        (b"GET /latest/meta-data/ HT", 408),
    ];
    for (bytes, status) in cases {
        let mut s = h.connect();
        s.write_all(bytes).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(bytes));
        assert!(closed(&mut s));
    }
    // a head over 8 KiB, whether it ends or not
    for end in ["", "\r\n\r\n"] {
        let mut s = h.connect();
        let big = format!("GET / HTTP/1.1\r\nX-Pad: {}{end}", "a".repeat(9000));
        s.write_all(big.as_bytes()).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!(r.status, 431);
        assert!(closed(&mut s));
    }
    // an idle connection is closed without a word
    let mut s = h.connect();
    assert!(closed(&mut s));
}

/// A good client's request, retried on a fresh connection if the server closes it, must get
/// 200 before `deadline`.
fn good_client_answered(h: &Harness, deadline: Instant) -> Duration {
    let start = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "no answer for the good client");
        let mut s = h.connect();
        s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
            .unwrap();
        if s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n")
            .is_err()
        {
            continue;
        }
        if let Some(r) = read_response(&mut s, false) {
            assert_eq!((r.status, r.text()), (200, "testvm.default"));
            return start.elapsed();
        }
    }
}

#[test]
fn abusive_clients_do_not_starve_a_good_one() {
    // read_timeout far beyond the deadline: the good client must not wait for timeouts
    let limits = Limits {
        read_timeout: Duration::from_secs(60),
        max_connections: 8,
        ..Limits::default()
    };
    let h = Harness::start(AllowedPeers::Any, limits);
    let mut hogs = Vec::new();
    // slow clients hold their slots with partial heads
    for _ in 0..5 {
        let mut s = h.connect();
        s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: ")
            .unwrap();
        hogs.push(s);
    }
    // idle clients, well beyond the connection cap
    for _ in 0..40 {
        hogs.push(h.connect());
    }
    // garbage and oversized heads
    for _ in 0..5 {
        let mut s = h.connect();
        s.write_all(b"\x00\xff\xfe garbage \r\n\r\n").unwrap();
        hogs.push(s);
        let mut s = h.connect();
        s.write_all(&[b'x'; 16 * 1024]).unwrap();
        hogs.push(s);
    }
    let took = good_client_answered(&h, Instant::now() + DEADLINE);
    assert!(took < DEADLINE, "{took:?}");
    // and again, with everyone still connected
    good_client_answered(&h, Instant::now() + DEADLINE);
    drop(hogs);
}

#[test]
fn dropping_the_content_sender_stops_the_server() {
    let mut h = Harness::start(AllowedPeers::Any, Limits::default());
    assert_eq!(get(&mut h.connect(), "/").status, 200);
    drop(h.content.take());
    let served = h.served.take().unwrap();
    let result = h
        .runtime
        .block_on(async { tokio::time::timeout(DEADLINE, served).await });
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}
