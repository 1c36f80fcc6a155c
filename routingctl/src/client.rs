//! Connection to a daemon's API socket.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    // Fail early with the socket's name: tonic's own error for a missing socket is vague.
    std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the API at {} (is the daemon running? use --socket)",
            socket.display()
        )
    })?;
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::try_from("http://[::1]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the API at {}", socket.display()))
}
