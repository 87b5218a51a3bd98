//! http → https: a queue with `https_redirect` answers the requests of its http URLs with
//! `308 Permanent Redirect` to the same host and target over https, with no worker.

use std::io::Write;

use serde_json::json;

use crate::harness::*;

#[test]
fn a_redirecting_queue_answers_http_with_308_to_the_same_target_over_https() {
    let (d, port) = Daemon::builder()
        .tag("redirect")
        .spawn_on_free_port(|port| {
            format!(
                "[[queue]]\nname = \"site\"\nurls = [\"http://+:{port}/\"]\nhttps_redirect = 8443\n"
            )
        });

    // The path and query as sent, the host without its port, a port other than 443 named;
    // the connection is kept for the next request.
    let mut c = connect(port);
    let mut buf = Vec::new();
    for path in ["/a/b?c=d", "/second"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: www.example.com:{port}\r\n\r\n");
        c.write_all(request.as_bytes()).expect("send");
        let (status, head, body) = read_response(&mut c, &mut buf, false);
        assert_eq!(status, 308, "{head}");
        assert!(
            head.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{head}"
        );
        let want = format!("https://www.example.com:8443{path}");
        assert_eq!(
            header_value(&head, "Location"),
            Some(want.as_str()),
            "{head}"
        );
        assert_eq!(header_value(&head, "Connection"), None, "{head}");
        assert!(body.is_empty());
    }

    // A request with a body is answered and the connection closed: the body is not read.
    let mut c = connect(port);
    c.write_all(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .expect("send");
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut c, &mut buf, false);
    assert_eq!(status, 308, "{head}");
    assert_eq!(header_value(&head, "Location"), Some("https://x:8443/form"));
    assert_eq!(header_value(&head, "Connection"), Some("close"), "{head}");

    // HTTP/1.0 without a Host: the local address stands for it.
    let (status, head, _) = http_raw(port, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header_value(&head, "Location"),
        Some("https://127.0.0.1:8443/old")
    );

    // Nothing was an error.
    assert!(d.errlog_text().lines().all(|l| l.starts_with('#')));

    // The queue takes http URLs only; the state view says where it sends them.
    let mut ctl = d.ctl();
    let (status, err) = ctl.add_url("site", &format!("https://+:{}/", free_port()));
    assert_eq!((status, err["code"].clone()), (400, json!(87)), "{err}");
    let state = d.state();
    let site = state["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "site"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(site["https_redirect"], 8443, "{state}");
}

#[test]
fn the_configuration_refuses_a_redirect_that_cannot_be() {
    for (queue, says) in [
        ("https_redirect = 0", "expected a port from 1 to 65535"),
        (
            "https_redirect = 443\nupstream = \"unix:/tmp/x.sock\"",
            "not both",
        ),
        (
            "https_redirect = 443\nurls = [\"https://+:443/\"]",
            "takes http URLs only",
        ),
    ] {
        let dir = TempDir::new("redirect-check");
        let file = dir.0.join("portshare.toml");
        std::fs::write(&file, format!("[[queue]]\nname = \"q\"\n{queue}\n")).expect("write");
        let out = std::process::Command::new(portshare_bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("portshare check-config");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains(says),
            "{queue}: {text}"
        );
    }
}
