//! Opaque connections (spec §16): once an upgrade is accepted, the daemon parses nothing
//! more on the connection and copies bytes both ways until either side is done.
//!
//! This module owns the copy: leftover bytes first (what each side sent past the heads),
//! then both directions at once through bounded buffers, an end of stream passed on as a
//! shutdown of the other side's writing (half-close), until both directions have ended or a
//! side fails. It must not apply the request timers: an opaque connection has none
//! (keep-alive is the application's business). A graceful stop lets it run until the
//! shutdown timer ends the daemon, as it lets requests in progress finish.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, copy_bidirectional_with_sizes};

/// The buffer of each direction.
const BUF: usize = 16 * 1024;

/// Copies bytes between `client` and `upstream` until both directions have ended or either
/// side fails. `to_upstream` and `to_client` are bytes already read that belong to the
/// other side, written first.
pub(crate) async fn pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    to_upstream: &[u8],
    to_client: &[u8],
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !to_client.is_empty() {
        client.write_all(to_client).await?;
        client.flush().await?;
    }
    if !to_upstream.is_empty() {
        upstream.write_all(to_upstream).await?;
    }
    copy_bidirectional_with_sizes(client, upstream, BUF, BUF)
        .await
        .map(drop)
}
