//! The server over real loopback connections: page, snapshot, update stream, graph and the token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use belated_dashboard::{ComputeSpec, Dashboard, GraphRenderer, Hub};

fn renderer() -> GraphRenderer {
    Arc::new(|labels, edges| {
        Ok(format!(
            "<svg xmlns='http://www.w3.org/2000/svg'>{}<!-- {} edges --></svg>",
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| format!("<g id='task-{i}'><text>{l}</text></g>"))
                .collect::<String>(),
            edges.len()
        ))
    })
}

/// One GET over a fresh connection: (status code, headers and body as text).
fn get(dashboard: &Dashboard, path: &str) -> (u16, String) {
    get_as(dashboard, path, "localhost")
}

/// One GET with the given `Host` header.
fn get_as(dashboard: &Dashboard, path: &str, host: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(dashboard.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response)
}

fn spec() -> ComputeSpec {
    ComputeSpec {
        groups: vec![Arc::from("square"), Arc::from("add")],
        group_of: vec![0, 0, 1],
        edges: vec![(0, 2), (1, 2)],
        workers: 2,
    }
}

#[test]
fn serves_the_page_a_snapshot_and_the_graph_on_loopback() {
    let hub = Hub::new();
    let dashboard = Dashboard::start(Arc::clone(&hub), "127.0.0.1", 0, None, renderer()).unwrap();
    assert_eq!(
        dashboard.url(),
        format!("http://127.0.0.1:{}/", dashboard.address().port())
    );

    let (status, page) = get(&dashboard, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>belated dashboard</title>"));
    assert!(page.contains("content-security-policy"), "{page:.300}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );

    let (status, _) = get(&dashboard, "/api/graph.svg");
    assert_eq!(status, 404, "no graph before a computation");

    let live = hub.begin(spec());
    live.task_started(0, Some(1));
    live.task_finished(0, Some(1), true);
    let (status, state) = get(&dashboard, "/api/state");
    assert_eq!(status, 200);
    assert!(state.contains("\"name\":\"square\""), "{state}");
    assert!(state.contains("\"done\":1"), "{state}");

    let (status, svg) = get(&dashboard, "/api/graph.svg");
    assert_eq!(status, 200);
    assert!(
        svg.contains("image/svg+xml") && svg.contains("id='task-2'") && svg.contains("2 edges")
    );
}

#[test]
fn the_update_stream_pushes_progress_as_it_happens() {
    let hub = Hub::new();
    let dashboard = Dashboard::start(Arc::clone(&hub), "127.0.0.1", 0, None, renderer()).unwrap();
    let live = hub.begin(spec());
    let mut stream = TcpStream::connect(dashboard.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut next_update = || loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            return data.to_string();
        }
    };
    let first = next_update();
    assert!(
        first.contains("\"fresh\":true") && first.contains("\"done\":0"),
        "{first}"
    );
    live.task_started(1, Some(0));
    live.task_finished(1, Some(0), true);
    let second = next_update();
    assert!(second.contains("\"fresh\":false"), "{second}");
    assert!(second.contains("\"statuses\":[[1,1],[1,2]]"), "{second}");
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let hub = Hub::new();
    let dashboard = Dashboard::start(hub, "0.0.0.0", 0, None, renderer()).unwrap();
    let url = dashboard.url();
    let token = url
        .split("token=")
        .nth(1)
        .expect("a token is generated off loopback");
    assert_eq!(token.len(), 32);
    assert_eq!(get(&dashboard, "/").0, 403);
    assert_eq!(get(&dashboard, "/api/state?token=wrong").0, 403);
    assert_eq!(get(&dashboard, &format!("/?token={token}")).0, 200);
    assert_eq!(get(&dashboard, &format!("/api/state?token={token}")).0, 200);
}

#[test]
fn a_taken_port_is_a_clear_error_and_stopping_frees_it() {
    let hub = Hub::new();
    let mut first = Dashboard::start(Arc::clone(&hub), "127.0.0.1", 0, None, renderer()).unwrap();
    let port = first.address().port();
    let error =
        Dashboard::start(Arc::clone(&hub), "127.0.0.1", port, None, renderer()).unwrap_err();
    assert!(error.to_string().contains("choose another port"), "{error}");
    first.stop();
    let again = Dashboard::start(hub, "127.0.0.1", port, None, renderer());
    assert!(
        again.is_ok(),
        "the port is free after stop: {:?}",
        again.err()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[test]
fn requests_for_another_host_are_refused_against_dns_rebinding() {
    let hub = Hub::new();
    let dashboard = Dashboard::start(hub, "127.0.0.1", 0, None, renderer()).unwrap();
    let port = dashboard.address().port();
    for path in ["/", "/api/state", "/api/events", "/api/graph.svg"] {
        assert_eq!(
            get_as(&dashboard, path, &format!("evil.example:{port}")).0,
            421,
            "{path}"
        );
    }
    assert_eq!(get_as(&dashboard, "/", &format!("127.0.0.1:{port}")).0, 200);
    assert_eq!(get_as(&dashboard, "/", &format!("localhost:{port}")).0, 200);

    let open = Dashboard::start(Hub::new(), "0.0.0.0", 0, None, renderer()).unwrap();
    let query = open.url().split_once('?').unwrap().1.to_string();
    assert_eq!(
        get_as(&open, &format!("/?{query}"), "evil.example").0,
        421,
        "even with the token"
    );
    assert_eq!(get_as(&open, &format!("/?{query}"), "0.0.0.0").0, 200);
}

#[test]
fn off_loopback_an_empty_or_short_token_is_refused() {
    for token in ["", "short", "fifteen-chars-x"] {
        let error = Dashboard::start(Hub::new(), "0.0.0.0", 0, Some(token.into()), renderer())
            .expect_err(token);
        assert!(error.to_string().contains("at least 16"), "{error}");
    }
    let long = "a-token-of-sixteen".to_string();
    let dashboard =
        Dashboard::start(Hub::new(), "0.0.0.0", 0, Some(long.clone()), renderer()).unwrap();
    assert_eq!(get(&dashboard, &format!("/?token={long}")).0, 200);
    let loopback = Dashboard::start(Hub::new(), "127.0.0.1", 0, Some(String::new()), renderer());
    assert!(
        loopback.is_ok(),
        "on loopback any token, even none, is the user's choice"
    );
}
