//! Opaque connections (spec §16): once an upgrade is accepted, the daemon parses nothing
//! more on the connection and copies bytes both ways until either side is done.
//!
//! This module owns the copy: leftover bytes first (what each side sent past the heads),
//! then both directions at once through bounded buffers, an end of stream passed on as a
//! shutdown of the other side's writing (half-close), until both directions have ended, a
//! side fails, or the daemon stops. It must not apply the request timers: an opaque
//! connection has none (keep-alive is the application's business).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, copy_bidirectional_with_sizes};

use crate::shared::Shared;

/// The buffer of each direction.
const BUF: usize = 16 * 1024;

/// Copies bytes between `client` and `upstream` until both directions have ended, either
/// side fails, or the daemon begins to stop. `to_upstream` and `to_client` are bytes
/// already read that belong to the other side, written first.
pub(crate) async fn pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    to_upstream: &[u8],
    to_client: &[u8],
    shared: &Shared,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let stop = shared.stop.notified();
    tokio::pin!(stop);
    stop.as_mut().enable();
    if shared.stopping() {
        return Ok(());
    }
    let copy = async {
        if !to_client.is_empty() {
            client.write_all(to_client).await?;
            client.flush().await?;
        }
        if !to_upstream.is_empty() {
            upstream.write_all(to_upstream).await?;
        }
        copy_bidirectional_with_sizes(client, upstream, BUF, BUF).await
    };
    // The losing copy is dropped with what it held: the connection ends either way.
    tokio::select! {
        r = copy => r.map(drop),
        () = &mut stop => Ok(()),
    }
}
