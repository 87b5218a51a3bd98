//! Many URLs at once: `POST /v1/queues/{name}/urls` with a batch (all registered or none,
//! the failing URL named by its index, a cap), the SDK sending its URLs in one request, a
//! reload moving URLs between queues, and the state view's filters (`?queue=`, `?port=`,
//! `?url=`) with `show servicestate --queue/--port/--url`.

use std::process::Command;

use crate::access::{OWNER, call, open_daemon, probe};
use crate::harness::*;
use portshare_proto::control::path;
use serde_json::{Value, json};

/// `POST /v1/queues/{queue}/urls` with `{"urls": [{"url": ...}, ...]}`.
fn add_batch(ctl: &mut Ctl, queue: &str, urls: &[String]) -> (u16, Value) {
    let urls: Vec<Value> = urls.iter().map(|u| json!({ "url": u })).collect();
    ctl.call(
        "POST",
        &path::queue(queue, path::URLS),
        Some(json!({ "urls": urls })),
    )
}

/// The registered prefixes of a state view.
fn prefixes(state: &Value) -> Vec<String> {
    let mut out: Vec<String> = state["prefixes"]
        .as_array()
        .expect("prefixes")
        .iter()
        .map(|p| p["url"].as_str().expect("url").to_owned())
        .collect();
    out.sort();
    out
}

fn names(state: &Value) -> Vec<String> {
    state["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn a_batch_registers_every_url_and_answers_for_each() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "many" }));
    let (p1, p2) = (free_port(), free_port());
    let urls = [
        format!("http://+:{p1}/a/"),
        format!("http://+:{p1}/b/"),
        format!("http://localhost:{p2}/c/"),
    ];
    let (status, body) = add_batch(&mut ctl, "many", &urls);
    assert_eq!(status, 201, "{body}");
    let answers = body["urls"].as_array().expect("one answer per URL");
    assert_eq!(answers.len(), 3, "{body}");
    for (answer, url) in answers.iter().zip(&urls) {
        assert_eq!(answer["url"], url.as_str(), "{body}");
        assert!(
            !answer["listening"]
                .as_array()
                .expect("listening")
                .is_empty()
        );
    }
    assert_eq!(prefixes(&d.state()), urls.to_vec());
    assert!(!port_free(p1) && !port_free(p2), "both ports bound");
    // The single form answers as it always did.
    let (status, one) = ctl.add_url("many", &format!("http://+:{p1}/d/"));
    assert_eq!(status, 201, "{one}");
    assert_eq!(one["url"], format!("http://+:{p1}/d/"));
    let log = d.log();
    assert!(
        log.contains("registered a batch") && log.contains("urls=3"),
        "{log}"
    );
}

#[test]
fn a_batch_with_a_bad_url_registers_none_and_names_it() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "first" }));
    ctl.create_queue(json!({ "name": "second" }));
    let (held, fresh) = (free_port(), free_port());
    assert_eq!(ctl.add_url("first", &format!("http://+:{held}/x/")).0, 201);
    let before = prefixes(&d.state());

    // A duplicate within the batch: 183 at its second place; the port bound for the batch
    // is let go again.
    let dup = [
        format!("http://+:{fresh}/a/"),
        format!("http://+:{held}/y/"),
        format!("http://+:{fresh}/A/"),
    ];
    let (status, err) = add_batch(&mut ctl, "second", &dup);
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(183), Some(2))
    );
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("URL 2 of the batch"), "{message}");
    assert_eq!(prefixes(&d.state()), before);
    assert!(
        eventually(5, || port_free(fresh)),
        "the batch's port is let go"
    );

    // A duplicate of another queue's URL.
    let other = [
        format!("http://+:{fresh}/a/"),
        format!("http://+:{held}/x/"),
    ];
    let (status, err) = add_batch(&mut ctl, "second", &other);
    assert_eq!(status, 409, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(183), Some(1))
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("first"),
        "{err}"
    );
    assert_eq!(prefixes(&d.state()), before);

    // A malformed URL: 87, before anything is registered.
    let bad = [
        format!("http://+:{fresh}/a/"),
        format!("http://+:{fresh}/b/"),
        "http://+:notaport/".to_owned(),
    ];
    let (status, err) = add_batch(&mut ctl, "second", &bad);
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(87), Some(2))
    );
    assert_eq!(prefixes(&d.state()), before);
    assert!(port_free(fresh));

    // The single form says no index.
    let (status, err) = ctl.add_url("second", &format!("http://+:{held}/x/"));
    assert_eq!(status, 409, "{err}");
    assert!(err.get("index").is_none(), "{err}");

    // After all that, the same batch without its duplicate registers whole.
    let (status, body) = add_batch(&mut ctl, "second", &dup[..2]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(prefixes(&d.state()).len(), 3);
}

#[test]
fn a_batch_outside_the_callers_reservation_registers_none() {
    let port = free_port();
    let (d, site) = open_daemon(&format!(
        "[[urlacl]]\nurl = \"http://+:{port}/mine/\"\nusers = [\"uid:{OWNER}\"]\n"
    ));
    let batch = json!({ "urls": [
        { "url": format!("http://+:{port}/mine/a/") },
        { "url": format!("http://+:{port}/mine/b/") },
        { "url": format!("http://+:{port}/theirs/") },
    ]});
    let Some(p) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "own" })),
            call("POST", "/v1/queues/own/urls", batch),
            call("GET", "/v1/state", Value::Null),
        ]),
        &[],
    ) else {
        return;
    };
    let (status, err) = p.result(1);
    assert_eq!(status, 403, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(5), Some(2))
    );
    let (_, state) = p.result(2);
    assert_eq!(prefixes(state), Vec::<String>::new(), "{state}");
    assert!(prefixes(&d.state()).is_empty());
    assert!(
        eventually(5, || port_free(port)),
        "the batch's port is let go"
    );
}

#[test]
fn a_batch_over_the_cap_is_refused_whole_and_a_full_one_fits() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "big" }));
    let port = free_port();
    // Long enough that a full batch is over a megabyte of JSON.
    let pad = "p".repeat(100);
    let urls: Vec<String> = (0..10_001)
        .map(|i| format!("http://+:{port}/{pad}/t{i}/"))
        .collect();
    let (status, err) = add_batch(&mut ctl, "big", &urls);
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], 87);
    assert!(err.get("index").is_none(), "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 10000"),
        "{err}"
    );
    assert!(prefixes(&d.state()).is_empty());

    let (status, body) = add_batch(&mut ctl, "big", &urls[..10_000]);
    assert_eq!(
        status,
        201,
        "{}",
        &body.to_string()[..200.min(body.to_string().len())]
    );
    assert_eq!(body["urls"].as_array().map(Vec::len), Some(10_000));
    // A filtered view finds one of them without listing the rest.
    let (status, view) = ctl.call(
        "GET",
        &format!("/v1/state?url=http://%2B:{port}/{pad}/t9999/"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(prefixes(&view), [format!("http://+:{port}/{pad}/t9999/")]);
    assert_eq!(
        view["queues"][0]["urls"],
        json!([format!("http://+:{port}/{pad}/t9999/")])
    );
}

#[test]
fn the_sdk_registers_its_urls_in_one_request() {
    let d = Daemon::start();
    let port = free_port();
    let urls: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|p| format!("http://+:{port}/{p}/"))
        .collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let _app = d.hello("sdk", &refs, &[]);
    assert_eq!(prefixes(&d.state()), urls);
    let log = d.log();
    assert!(
        log.contains("registered a batch") && log.contains("urls=3"),
        "{log}"
    );
    let (status, _, body) = get(port, "x", "/b/x");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("prefix=http://+:{port}/b/")),
        "{body}"
    );
}

#[test]
fn a_reload_moves_a_url_to_an_earlier_queue() {
    let port = free_port();
    let queues = |first: &str, second: &str| {
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n\
             [[queue]]\nname = \"one\"\nurls = [{first}]\n\n\
             [[queue]]\nname = \"two\"\nurls = [{second}]\n"
        )
    };
    let (a, b, c) = (
        format!("\"http://+:{port}/a/\""),
        format!("\"http://+:{port}/b/\""),
        format!("\"http://+:{port}/c/\""),
    );
    let d = Daemon::builder()
        .config(queues(&b, &format!("{a}, {c}")))
        .iplisten_from_config()
        .spawn();
    let owner = |state: &Value, url: &str| {
        state["prefixes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["url"] == url))
            .map(|p| p["queue"].as_str().unwrap_or_default().to_owned())
    };
    let url_a = format!("http://+:{port}/a/");
    assert_eq!(owner(&d.state(), &url_a).as_deref(), Some("two"));
    // `a` moves from the second queue to the first: the second lets go of it before the
    // first takes it, in one reload.
    d.write_config(&queues(&format!("{a}, {b}"), &c));
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["warnings"], json!([]), "{report}");
    let changes = report["changes"].to_string();
    assert!(changes.contains(&format!("{url_a} removed")), "{changes}");
    assert!(changes.contains(&format!("{url_a} added")), "{changes}");
    let state = d.state();
    assert_eq!(owner(&state, &url_a).as_deref(), Some("one"), "{state}");
    assert_eq!(prefixes(&state).len(), 3);
}

/// Two queues on two ports: `one` with `/a/` and `/b/` on `p1` and `/c/` on `p2`, `two`
/// with `/d/` on `p2`.
fn two_queues(d: &Daemon) -> (Ctl, u16, u16) {
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "one" }));
    ctl.create_queue(json!({ "name": "two" }));
    let (p1, p2) = (free_port(), free_port());
    let urls = [
        format!("http://+:{p1}/a/"),
        format!("http://+:{p1}/b/"),
        format!("http://+:{p2}/c/"),
    ];
    assert_eq!(add_batch(&mut ctl, "one", &urls).0, 201);
    assert_eq!(ctl.add_url("two", &format!("http://+:{p2}/d/")).0, 201);
    (ctl, p1, p2)
}

#[test]
fn state_filters_narrow_the_view_and_combine() {
    let d = Daemon::start();
    let (mut ctl, p1, p2) = two_queues(&d);
    let mut view = |query: &str| {
        let (status, body) = ctl.call("GET", &format!("/v1/state{query}"), None);
        assert_eq!(status, 200, "{query}: {body}");
        body
    };

    let whole = view("");
    assert_eq!(prefixes(&whole).len(), 4);
    assert!(whole.get("filter").is_none(), "{whole}");
    assert_eq!(names(&whole), ["one", "two"]);
    assert_eq!(whole["listeners"].as_array().map(Vec::len), Some(2));

    let one = view("?queue=one");
    assert_eq!(names(&one), ["one"]);
    assert_eq!(prefixes(&one).len(), 3);
    assert_eq!(one["queues"][0]["urls"].as_array().map(Vec::len), Some(3));
    assert_eq!(one["filter"], json!({ "queue": "one" }));

    let on_p2 = view(&format!("?port={p2}"));
    assert_eq!(
        prefixes(&on_p2),
        [format!("http://+:{p2}/c/"), format!("http://+:{p2}/d/")]
    );
    assert_eq!(names(&on_p2), ["one", "two"]);
    // A queue shown for a port lists its URLs on that port only.
    assert_eq!(
        on_p2["queues"][0]["urls"],
        json!([format!("http://+:{p2}/c/")])
    );
    let listeners = on_p2["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 1);
    assert!(
        listeners[0]["address"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&format!(":{p2}"))
    );

    // The text a URL begins with, whatever its case, `+` as itself or escaped.
    for query in [
        format!("?url=http://+:{p1}/A"),
        format!("?url=http%3A%2F%2F%2B%3A{p1}%2Fa%2F"),
    ] {
        let a = view(&query);
        assert_eq!(prefixes(&a), [format!("http://+:{p1}/a/")], "{query}");
        assert_eq!(names(&a), ["one"], "{query}");
    }

    let none = view(&format!("?queue=two&port={p1}"));
    assert!(
        prefixes(&none).is_empty() && names(&none).is_empty(),
        "{none}"
    );
    let both = view(&format!("?queue=two&port={p2}&url=http://%2B:{p2}/d"));
    assert_eq!(prefixes(&both), [format!("http://+:{p2}/d/")]);
    assert!(
        view("?queue=nobody")["queues"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

#[test]
fn bad_state_filters_are_invalid_parameter() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    for (query, says) in [
        ("?port=0", "1 to 65535"),
        ("?port=http", "1 to 65535"),
        ("?queue=", "empty"),
        ("?queue=a&queue=b", "twice"),
        ("?url=%zz", "percent-encoded"),
        ("?name=x", "unknown state filter"),
    ] {
        let (status, err) = ctl.call("GET", &format!("/v1/state{query}"), None);
        assert_eq!(
            (status, err["code"].as_u64()),
            (400, Some(87)),
            "{query}: {err}"
        );
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{query}: {message}");
    }
}

#[test]
fn show_servicestate_filters_by_queue_port_and_url() {
    let d = Daemon::start();
    let (_ctl, p1, p2) = two_queues(&d);
    let show = |args: &[&str]| {
        let out = Command::new(portshare_bin())
            .args(["show", "servicestate"])
            .args(args)
            .arg("--control")
            .arg(&d.control)
            .env_remove("PORTSHARE_CONTROL")
            .output()
            .expect("portshare runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = show(&["--queue", "two"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.contains("Shown: queue two (a filtered view)"),
        "{text}"
    );
    assert!(text.contains("Request queue name: two"), "{text}");
    assert!(!text.contains("Request queue name: one"), "{text}");

    let (code, text, err) = show(&["--port", &p1.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains(&format!("http://+:{p1}/a/")), "{text}");
    assert!(!text.contains(&format!("http://+:{p2}/")), "{text}");
    assert!(!text.contains("Request queue name: two"), "{text}");

    let (code, json, err) = show(&[
        "--port",
        &p2.to_string(),
        "--url",
        &format!("http://+:{p2}/d"),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let view: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(prefixes(&view), [format!("http://+:{p2}/d/")]);
    assert_eq!(view["filter"]["port"], p2);

    // A port clap refuses: a usage error, exit 2.
    let (code, _, err) = show(&["--port", "0"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn a_filtered_view_hides_what_the_whole_view_hides() {
    let (d, site) = open_daemon("");
    let (_app, port) = hello_on_free_port(&d, "roots", &["/r/"], &[]);
    let filtered = format!("/v1/state?queue=roots&port={port}");
    let Some(p) = probe(
        &site,
        Some(OWNER),
        json!([call("GET", &filtered, Value::Null)]),
        &[],
    ) else {
        return;
    };
    let (status, view) = p.result(0);
    assert_eq!(status, 200, "{view}");
    let q = &view["queues"][0];
    assert_eq!(q["name"], "roots", "{view}");
    assert_eq!(
        (q["processes"].clone(), q["processes_hidden"].clone()),
        (json!([]), json!(true))
    );
    // Root, an administrator, sees them through the same filter.
    let (_, mine) = d.ctl().call("GET", &filtered, None);
    assert_eq!(
        mine["queues"][0]["processes"].as_array().map(Vec::len),
        Some(1),
        "{mine}"
    );
}

#[test]
fn a_reload_changes_only_the_urls_that_changed() {
    let port = free_port();
    let config = |urls: &[&str]| {
        let list: Vec<String> = urls
            .iter()
            .map(|u| format!("\"http://+:{port}/{u}/\""))
            .collect();
        format!(
            "iplisten = [\"127.0.0.1\"]\n\n[[queue]]\nname = \"q\"\nurls = [{}]\n",
            list.join(", ")
        )
    };
    let d = Daemon::builder()
        .config(config(&["A", "b", "c"]))
        .iplisten_from_config()
        .spawn();
    // `A` spelled `a` is the same URL: no change; `c` goes, `d` comes.
    d.write_config(&config(&["a", "b", "d"]));
    let (status, report) = d.ctl().call("POST", "/v1/reload", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["changes"],
        json!([
            format!("queue \"q\": http://+:{port}/c/ removed"),
            format!("queue \"q\": http://+:{port}/d/ added"),
        ]),
        "{report}"
    );
    assert_eq!(
        prefixes(&d.state()),
        [
            format!("http://+:{port}/A/"),
            format!("http://+:{port}/b/"),
            format!("http://+:{port}/d/"),
        ]
    );
}

#[test]
fn a_batch_past_the_users_url_cap_registers_none() {
    let port = free_port();
    let (d, site) = open_daemon(&format!(
        "[[urlacl]]\nurl = \"http://+:{port}/mine/\"\nusers = [\"uid:{OWNER}\"]\n\n\
         [control]\nmax_urls_per_uid = 2\n"
    ));
    let urls: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|p| json!({ "url": format!("http://+:{port}/mine/{p}/") }))
        .collect();
    let Some(p) = probe(
        &site,
        Some(OWNER),
        json!([
            call("POST", "/v1/queues", json!({ "name": "capped" })),
            call("POST", "/v1/queues/capped/urls", json!({ "urls": urls })),
            call(
                "POST",
                "/v1/queues/capped/urls",
                json!({ "urls": urls[..2] })
            ),
        ]),
        &[],
    ) else {
        return;
    };
    // The third URL is past the cap: 1816 at its place, and none of the three stays.
    let (status, err) = p.result(1);
    assert_eq!(status, 429, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(1816), Some(2))
    );
    // Two fit.
    let (status, body) = p.result(2);
    assert_eq!(status, 201, "{body}");
    assert_eq!(prefixes(&d.state()).len(), 2);
}

/// `DELETE /v1/queues/{queue}/urls` with `{"urls": [{"url": ...}, ...]}`.
fn remove_batch(ctl: &mut Ctl, queue: &str, urls: &[String]) -> (u16, Value) {
    let urls: Vec<Value> = urls.iter().map(|u| json!({ "url": u })).collect();
    ctl.call(
        "DELETE",
        &path::queue(queue, path::URLS),
        Some(json!({ "urls": urls })),
    )
}

#[test]
fn a_batch_removal_takes_every_url_or_none_and_names_the_refused_one() {
    let d = Daemon::start();
    let mut ctl = d.ctl();
    ctl.create_queue(json!({ "name": "many" }));
    ctl.create_queue(json!({ "name": "other" }));
    let port = free_port();
    let urls: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|p| format!("http://+:{port}/{p}/"))
        .collect();
    assert_eq!(add_batch(&mut ctl, "many", &urls).0, 201);
    let theirs = format!("http://+:{port}/theirs/");
    assert_eq!(ctl.add_url("other", &theirs).0, 201);
    let all = prefixes(&d.state());

    // One the queue does not hold (another queue's), at index 1: 2, and nothing removed.
    let (status, err) = remove_batch(&mut ctl, "many", &[urls[0].clone(), theirs.clone()]);
    assert_eq!(status, 404, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err["index"].as_u64()),
        (Some(2), Some(1))
    );
    // The same URL twice, in another spelling: 2 at its second place.
    let twice = [
        urls[1].clone(),
        urls[1].to_uppercase().replace("HTTP://", "http://"),
    ];
    let (status, err) = remove_batch(&mut ctl, "many", &twice);
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["index"].as_u64(), Some(1), "{err}");
    // A malformed one: 87.
    let bad = [urls[0].clone(), "http://+:notaport/".to_owned()];
    let (status, err) = remove_batch(&mut ctl, "many", &bad);
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["index"].as_u64(), Some(1), "{err}");
    // Over the cap: refused whole before any URL is looked at, 87 without an index.
    let mut over: Vec<String> = urls.clone();
    over.extend((0..10_000).map(|n| format!("http://+:{port}/x{n}/")));
    let (status, err) = remove_batch(&mut ctl, "many", &over);
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        (err["code"].as_u64(), err.get("index")),
        (Some(87), None),
        "{err}"
    );
    assert_eq!(prefixes(&d.state()), all);

    // Three of the four at once; the fourth still routes, the port still listens.
    let (status, body) = remove_batch(&mut ctl, "many", &urls[..3]);
    assert_eq!(status, 204, "{body}");
    let mut left = vec![urls[3].clone(), theirs.clone()];
    left.sort();
    assert_eq!(prefixes(&d.state()), left);
    assert!(d.log().contains("removed a batch"), "{}", d.log());
    // The single form, as before.
    let (status, body) = ctl.call(
        "DELETE",
        &path::queue("many", path::URLS),
        Some(json!({ "url": urls[3] })),
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(prefixes(&d.state()), [theirs]);
}
