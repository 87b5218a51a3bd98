//! The end-to-end tests, in one binary: the real `portshare` command and daemon, the example
//! applications, raw sockets on loopback. The harness (`harness`) starts and stops the
//! processes; each module holds the tests of one topic.
//!
//! Some tests run this binary again as a helper process: a control client as another
//! account, a worker speaking the wire by hand, a test that changes a process-wide limit.
//! The helper runs one test alone, named by its path here (`access::access_probe`), which
//! [`harness::only_test`] builds from the module it is in.
//!
//! A new topic is a module here, not a file beside `tests/it`: that would be a binary of
//! its own, compiled and linked again, without the harness.

mod harness;

mod abuse;
mod access;
mod accesslog;
mod acme;
mod batch;
mod blocking;
mod bodies;
mod cli;
mod descriptors;
mod errlog;
mod explain_vectors;
mod flow;
mod framing;
mod h2;
mod http1;
mod lifecycle;
mod limits;
mod load;
mod metrics;
mod operator;
mod pipeline;
mod proxy;
mod queues;
mod redirect;
mod registrations;
mod reload;
mod routing;
mod run;
mod shutdown;
mod sslcert;
mod tls;
mod top;
mod upstream;
mod upstream_owner;
mod urlacl;
mod websocket;
mod websocket_upstream;
