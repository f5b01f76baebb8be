//! `[metrics]`: where the `/metrics`, `/healthz` and `/readyz` endpoint listens, if anywhere.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]`: the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [metrics] table")]
pub struct MetricsSection {
    /// Address and port to listen on, e.g. `127.0.0.1:9464` (an IP address, not a host name).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
}

impl MetricsSection {
    /// The endpoint `ROLLBACK_METRICS_LISTEN` asks for: `off` for none, else an address.
    pub(super) fn from_variable(value: &str) -> Result<Option<Self>, String> {
        if value == "off" {
            return Ok(None);
        }
        let listen = parse_listen(value).map_err(|message| format!("{message} (or `off`)"))?;
        Ok(Some(Self { listen }))
    }
}

/// Reads `metrics.listen`, with a message that says what to write instead.
fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address and port such as 127.0.0.1:9464 or [::1]:9464")
    })
}
