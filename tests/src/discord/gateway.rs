//! The gateway side of the stand-in: a websocket server that speaks Hello, takes Identify,
//! answers READY and heartbeats, and dispatches events (INTERACTION_CREATE) the test sends.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use super::payloads::{self, APPLICATION_ID, BOT_USER_ID};

/// Serves gateway sessions on `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    identifies: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<(String, Value)>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { break };
                let identifies = identifies.clone();
                let events = events.subscribe();
                sessions.spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(socket).await {
                        session(ws, identifies, events).await;
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

async fn session(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    identifies: Arc<Mutex<Vec<Value>>>,
    mut events: broadcast::Receiver<(String, Value)>,
) {
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 41250}, "s": null, "t": null});
    if ws.send(Message::Text(hello.to_string())).await.is_err() {
        return;
    }
    let mut seq = 0u64;
    let mut ready = false;
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(message)) = incoming else { return };
                let Message::Text(text) = message else { continue };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else { continue };
                match payload["op"].as_u64() {
                    Some(2) => {
                        identifies.lock().expect("not poisoned").push(payload["d"].clone());
                        seq += 1;
                        let ready_event = json!({
                            "op": 0, "t": "READY", "s": seq,
                            "d": {
                                "v": 10,
                                "user": payloads::user(BOT_USER_ID, "rollback-bot"),
                                "guilds": [],
                                "session_id": "stand-in-session",
                                "resume_gateway_url": "ws://127.0.0.1:1",
                                "shard": [0, 1],
                                "application": {"id": APPLICATION_ID, "flags": 0}
                            }
                        });
                        if ws.send(Message::Text(ready_event.to_string())).await.is_err() {
                            return;
                        }
                        ready = true;
                    }
                    Some(1) => {
                        let ack = json!({"op": 11, "d": null, "s": null, "t": null});
                        if ws.send(Message::Text(ack.to_string())).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
            event = events.recv(), if ready => {
                let Ok((name, data)) = event else { return };
                seq += 1;
                let dispatch = json!({"op": 0, "t": name, "s": seq, "d": data});
                if ws.send(Message::Text(dispatch.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}
