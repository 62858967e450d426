//! The delivery record: JSONL lines written by one task fed through a bounded channel, so a
//! request never waits on the disk (only, under sustained overload, on channel capacity).

use std::path::Path;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// One delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub action: &'static str,
    /// Batch: the user id; SendMessage / P2P: the conversation id.
    pub recipient: u64,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<u64>,
    /// P2P: the users that got it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<u64>>,
    /// RFC 3339 with nanoseconds: the instant the limit window counted it.
    pub time: String,
}

pub struct Recorder {
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Recorder {
    pub async fn open(path: &Path) -> std::io::Result<Recorder> {
        let file = tokio::fs::File::create(path).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
        let task = tokio::spawn(async move {
            let mut w = tokio::io::BufWriter::new(file);
            while let Some(line) = rx.recv().await {
                w.write_all(&line).await?;
                // Drain what is queued, then flush so readers see whole lines promptly.
                while let Ok(line) = rx.try_recv() {
                    w.write_all(&line).await?;
                }
                w.flush().await?;
            }
            w.flush().await?;
            w.into_inner().sync_all().await
        });
        Ok(Recorder { tx, task })
    }

    pub fn sender(&self) -> mpsc::Sender<Vec<u8>> {
        self.tx.clone()
    }

    /// Close the channel and wait for the writer to flush.
    pub async fn close(self) -> std::io::Result<()> {
        drop(self.tx);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Serialize deliveries as JSONL bytes.
pub fn lines(ds: &[Delivery]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in ds {
        if serde_json::to_writer(&mut out, d).is_ok() {
            out.push(b'\n');
        }
    }
    out
}
