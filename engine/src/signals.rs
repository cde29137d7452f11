//! Wake-ups between engine processes on one database, over PostgreSQL LISTEN/NOTIFY.
//!
//! Within a process the parts wake each other directly. What one process commits that
//! another must act on (work queued for workers connected elsewhere, runs finished or
//! active that someone else's subscribers follow) is published on the `sfp_engine` channel
//! after the commit, coalesced by a publisher with its own connection so no request waits
//! for it. Each process listens and wakes its own parts. Notifications are a shortcut, not
//! the record: a process that misses one (its listener reconnecting, a publisher that died
//! between commit and notify) finds the same state at its next poll.
//!
//! A NOTIFY is not free (commits that notify take a global lock), so a process publishes only
//! while other live processes are registered in `engine.process`; each refreshes its row
//! every few seconds. A newcomer sees the others at once; the others see it within
//! `PRESENCE_EVERY`, and poll until then.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::Engine;

pub(crate) const CHANNEL: &str = "sfp_engine";
/// How often a process refreshes its presence and looks for others.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// A process not seen for this long is gone.
const PRESENCE_LOST: Duration = Duration::from_secs(15);
/// Run ids per notification (payloads must stay under 8000 bytes).
const IDS_PER_MESSAGE: usize = 150;

#[derive(Debug, Clone)]
pub(crate) enum Signal {
    /// Queue items were added.
    Queued,
    /// Runs reached a final status.
    Finished(Vec<Uuid>),
    /// Runs have new task events or stream chunks.
    Activity(Vec<Uuid>),
}

pub(crate) type SignalSender = mpsc::UnboundedSender<Signal>;
pub(crate) type SignalReceiver = mpsc::UnboundedReceiver<Signal>;

pub(crate) fn channel() -> (SignalSender, SignalReceiver) {
    mpsc::unbounded_channel()
}

/// Messages are `<kind>:<tenant>:<process>[:<id>,<id>...]`; `h` (hello) is sent once by a
/// process that starts.
fn encode(signals: Vec<Signal>, tenant: Uuid, process: Uuid) -> Vec<String> {
    let mut queued = false;
    let mut finished = Vec::new();
    let mut active = Vec::new();
    for signal in signals {
        match signal {
            Signal::Queued => queued = true,
            Signal::Finished(ids) => finished.extend(ids),
            Signal::Activity(ids) => active.extend(ids),
        }
    }
    let mut messages = Vec::new();
    if queued {
        messages.push(format!("q:{tenant}:{process}"));
    }
    for (kind, mut ids) in [("f", finished), ("a", active)] {
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(IDS_PER_MESSAGE) {
            let list: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            messages.push(format!("{kind}:{tenant}:{process}:{}", list.join(",")));
        }
    }
    messages
}

/// Publishes what this process signalled, a batch at a time, until `shutdown`.
pub(crate) async fn publish(engine: Engine, mut queue: SignalReceiver, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            s = queue.recv() => s,
            _ = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        if !engine.inner.has_peers.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        let messages = encode(batch, engine.tenant_id(), engine.inner.process_id);
        let result = sqlx::query("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m")
            .bind(CHANNEL)
            .bind(&messages)
            .execute(engine.pool())
            .await;
        if let Err(e) = result {
            // Others find the same state at their next poll.
            tracing::debug!(error = %e, "could not notify other engine processes");
        }
    }
}

/// Registers this process (or refreshes its row) and notes whether others are alive.
pub(crate) async fn refresh_presence(engine: &Engine) -> Result<(), sqlx::Error> {
    let others: i64 = sqlx::query_scalar(
        "WITH me AS ( \
           INSERT INTO engine.process (id, tenant_id) VALUES ($1, $2) \
           ON CONFLICT (id) DO UPDATE SET seen_at = now()) \
         SELECT count(*) FROM engine.process \
         WHERE tenant_id = $2 AND id <> $1 AND seen_at > now() - make_interval(secs => $3)",
    )
    .bind(engine.inner.process_id)
    .bind(engine.tenant_id())
    .bind(PRESENCE_LOST.as_secs_f64())
    .fetch_one(engine.pool())
    .await?;
    engine.inner.has_peers.store(others > 0, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Keeps this process's presence fresh until `shutdown`, then removes it.
pub(crate) async fn keep_presence(engine: Engine, shutdown: CancellationToken) {
    loop {
        if wait(&shutdown, PRESENCE_EVERY).await {
            break;
        }
        if let Err(e) = refresh_presence(&engine).await {
            tracing::debug!(error = %e, "could not refresh this engine process's presence");
        }
    }
    let _ = sqlx::query("DELETE FROM engine.process WHERE id = $1 OR seen_at < now() - interval '1 day'")
        .bind(engine.inner.process_id)
        .execute(engine.pool())
        .await;
}

/// Starts listening; done before this process registers, so that every process that
/// registers later reaches it with its hello.
pub(crate) async fn subscribe(engine: &Engine) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(engine.pool()).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Registers this process and greets the others, so they publish from now on.
pub(crate) async fn announce(engine: &Engine) -> Result<(), sqlx::Error> {
    refresh_presence(engine).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("h:{}:{}", engine.tenant_id(), engine.inner.process_id))
        .execute(engine.pool())
        .await?;
    Ok(())
}

/// Receives other processes' signals and wakes this one's parts; reconnects when the
/// connection drops (the poll covers what was missed meanwhile).
pub(crate) async fn listen(engine: Engine, first: Option<PgListener>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    let mut first = first;
    loop {
        let mut listener = match first.take() {
            Some(l) => l,
            None => match subscribe(&engine).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "could not listen for other engine processes");
                    if wait(&shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(200);
        loop {
            let message = tokio::select! {
                m = listener.try_recv() => m,
                _ = shutdown.cancelled() => return,
            };
            match message {
                Ok(Some(n)) => receive(&engine, n.payload()),
                // The connection was lost; the next receive reconnects. Anything may have
                // happened meanwhile: look.
                Ok(None) => engine.wake_assigner(),
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other engine processes failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn wait(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn receive(engine: &Engine, payload: &str) {
    let mut parts = payload.splitn(4, ':');
    let (Some(kind), Some(tenant), Some(process)) = (parts.next(), parts.next(), parts.next()) else { return };
    if tenant != engine.tenant_id().to_string() || process == engine.inner.process_id.to_string() {
        return;
    }
    let mut ids = || -> HashSet<Uuid> {
        parts.next().unwrap_or_default().split(',').filter_map(|id| Uuid::parse_str(id).ok()).collect()
    };
    match kind {
        "h" => engine.inner.has_peers.store(true, std::sync::atomic::Ordering::Relaxed),
        "q" => engine.wake_assigner(),
        "f" => {
            for id in ids() {
                let _ = engine.inner.run_finished.send(id);
            }
        }
        "a" => {
            for id in ids() {
                let _ = engine.inner.run_activity.send(id);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_coalesce_and_stay_under_the_payload_limit() {
        let tenant = Uuid::new_v4();
        let process = Uuid::new_v4();
        let runs: Vec<Uuid> = (0..400).map(|_| Uuid::new_v4()).collect();
        let messages = encode(
            vec![
                Signal::Queued,
                Signal::Queued,
                Signal::Finished(runs.clone()),
                Signal::Finished(runs[..10].to_vec()),
                Signal::Activity(vec![runs[0]]),
            ],
            tenant,
            process,
        );
        assert_eq!(messages.iter().filter(|m| m.starts_with("q:")).count(), 1);
        assert_eq!(messages.iter().filter(|m| m.starts_with("f:")).count(), 3, "400 ids in chunks of 150");
        assert_eq!(messages.iter().filter(|m| m.starts_with("a:")).count(), 1);
        assert!(messages.iter().all(|m| m.len() < 8000));
        let mut seen: Vec<String> = messages
            .iter()
            .filter(|m| m.starts_with("f:"))
            .flat_map(|m| m.splitn(4, ':').nth(3).unwrap().split(',').map(str::to_owned).collect::<Vec<_>>())
            .collect();
        seen.sort();
        let mut expected: Vec<String> = runs.iter().map(Uuid::to_string).collect();
        expected.sort();
        assert_eq!(seen, expected, "every finished run once");
    }
}
