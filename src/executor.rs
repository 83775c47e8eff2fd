//! The one executor: it owns the command table (the history of this boot) and runs commands.
//!
//! The HTTP layer hands it typed requests and gets results back; nothing else touches the
//! table. Rules, from IPA's dispatcher and what the conductor relies on:
//! * one dispatch at a time; while the last command is RUNNING every new command is refused
//!   with 409 "Agent is busy" (checked before the name is even looked up);
//! * sync commands run to completion before the answer; async ones answer RUNNING at once
//!   (or their final state with `wait=true`) and run on a blocking thread;
//! * the history is kept in execution order for the whole boot and written to the state
//!   directory, so a restarted agent still shows it, with the interrupted command FAILED;
//! * when an async command ends, subscribers of `finished()` are told (the heartbeat loop sends
//!   an early heartbeat so the conductor notices without waiting a full interval).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tracing::Instrument;

use crate::commands::{self, Context, Mode, Outcome};
use crate::error::{ApiError, CommandError, ErrorKind};
use crate::state::StateDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "RUNNING")]
    Running,
    #[serde(rename = "SUCCEEDED")]
    Succeeded,
    #[serde(rename = "FAILED")]
    Failed,
    /// IPA keeps this spelling for any step-version mismatch; Ironic accepts it.
    #[serde(rename = "CLEAN_VERSION_MISMATCH")]
    VersionMismatch,
}

/// One command result, exactly the five keys Ironic reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: String,
    pub command_name: String,
    pub command_status: Status,
    pub command_error: Option<Value>,
    pub command_result: Option<Value>,
}

const HISTORY_FILE: &str = "commands.json";

/// A row of the table. A finished result never changes again, so its JSON is kept: the
/// conductor (and any monitoring) polls the whole list, which grows with the boot, and
/// re-encoding every row on every poll would take CPU from a running image write.
struct Row {
    result: CommandResult,
    /// The result's JSON once it is final; `None` while it runs.
    json: Option<Box<[u8]>>,
}

impl Row {
    fn new(result: CommandResult) -> Row {
        let mut row = Row { result, json: None };
        row.seal();
        row
    }

    /// Keep the JSON of a final result.
    fn seal(&mut self) {
        self.json = (self.result.command_status != Status::Running)
            .then(|| serde_json::to_vec(&self.result).ok())
            .flatten()
            .map(Vec::into_boxed_slice);
    }
}

pub struct Executor {
    table: Mutex<Vec<Row>>,
    /// Serialises dispatch (the busy check, sync commands and async start) like IPA's lock.
    dispatch: tokio::sync::Mutex<()>,
    /// Bumped whenever a command finishes; waiters re-check their command.
    changed: watch::Sender<u64>,
    /// Bumped whenever an *async* command finishes (drives the early heartbeat).
    finished: watch::Sender<u64>,
    /// Bumped whenever the command list is read: what the conductor does when it acts on a
    /// heartbeat (ends the early heartbeat's follow-ups).
    polled: watch::Sender<u64>,
    ctx: Arc<Context>,
    state: Option<StateDir>,
}

impl Executor {
    pub fn new(ctx: Arc<Context>, state: Option<StateDir>) -> Arc<Executor> {
        let mut history: Vec<CommandResult> = state
            .as_ref()
            .and_then(|s| s.read(HISTORY_FILE))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for r in history
            .iter_mut()
            .filter(|r| r.command_status == Status::Running)
        {
            // The agent died while this ran: say so instead of leaving it RUNNING forever,
            // which would make every later command busy and the conductor wait in vain.
            r.command_status = Status::Failed;
            r.command_error = Some(
                CommandError::new(
                    ErrorKind::Interrupted,
                    "the agent restarted while this command was running; its effects are unknown",
                )
                .to_json(),
            );
        }
        let ex = Arc::new(Executor {
            table: Mutex::new(history.into_iter().map(Row::new).collect()),
            dispatch: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            finished: watch::channel(0).0,
            polled: watch::channel(0).0,
            ctx,
            state,
        });
        ex.persist();
        ex
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// A receiver that changes each time an async command finishes.
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// A receiver that changes each time the command list is read.
    pub fn polled(&self) -> watch::Receiver<u64> {
        self.polled.subscribe()
    }

    /// The last command, with its progress if it runs.
    pub fn last(&self) -> Option<CommandResult> {
        let mut r = crate::panics::lock(&self.table)
            .last()
            .map(|row| row.result.clone())?;
        self.with_progress(&mut r);
        Some(r)
    }

    /// The history as `GET /v1/commands/` answers it: `{"commands": [...]}`, encoded.
    pub fn list_json(&self) -> Vec<u8> {
        self.polled.send_modify(|n| *n = n.wrapping_add(1));
        let mut out = b"{\"commands\":[".to_vec();
        let mut running = None;
        {
            let t = crate::panics::lock(&self.table);
            out.reserve(
                t.iter()
                    .map(|r| r.json.as_ref().map_or(256, |j| j.len() + 1))
                    .sum(),
            );
            for (i, row) in t.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match &row.json {
                    Some(j) => out.extend_from_slice(j),
                    // Only the last row can run (one command at a time); it is encoded below,
                    // outside the table's lock, with its progress.
                    None => running = Some(row.result.clone()),
                }
            }
        }
        if let Some(mut r) = running {
            self.with_progress(&mut r);
            if serde_json::to_writer(&mut out, &r).is_err() {
                out.extend_from_slice(b"null");
            }
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// A running image transfer shows its progress in the command's result.
    fn with_progress(&self, r: &mut CommandResult) {
        if r.command_status == Status::Running {
            if let Some(p) = crate::panics::lock(&self.ctx.progress).clone() {
                r.command_result = Some(serde_json::json!({ "progress": p.json() }));
            }
        }
    }

    fn find(&self, id: &str) -> Option<CommandResult> {
        let mut r = crate::panics::lock(&self.table)
            .iter()
            .find(|r| r.result.id == id)
            .map(|r| r.result.clone())?;
        self.with_progress(&mut r);
        Some(r)
    }

    /// One result; with `wait`, block until it is no longer RUNNING.
    pub async fn get(&self, id: &str, wait: bool) -> Result<CommandResult, ApiError> {
        let mut rx = self.changed.subscribe();
        loop {
            let r = self.find(id).ok_or_else(|| {
                ApiError::new(
                    404,
                    format!("Not found: Command Result with id {id} not found."),
                )
            })?;
            if !wait || r.command_status != Status::Running {
                return Ok(r);
            }
            if rx.changed().await.is_err() {
                return Ok(r);
            }
        }
    }

    fn persist(&self) {
        let Some(state) = &self.state else { return };
        let data = {
            let t = crate::panics::lock(&self.table);
            let rows: Vec<&CommandResult> = t.iter().map(|r| &r.result).collect();
            serde_json::to_vec(&rows).unwrap_or_default()
        };
        if let Err(e) = state.write(HISTORY_FILE, &data) {
            tracing::warn!(error = %e, "cannot save the command history");
        }
    }

    fn push(&self, r: CommandResult) {
        {
            let mut t = crate::panics::lock(&self.table);
            t.push(Row::new(r));
        }
        self.persist();
    }

    fn finish(&self, id: &str, status: Status, result: Option<Value>, error: Option<Value>) {
        {
            let mut t = crate::panics::lock(&self.table);
            if let Some(row) = t.iter_mut().find(|r| r.result.id == id) {
                row.result.command_status = status;
                row.result.command_result = result;
                row.result.command_error = error;
                row.seal();
            }
        }
        self.persist();
        self.changed.send_modify(|n| *n += 1);
    }

    /// Run `ext.cmd` with `params`, as `POST /v1/commands/` asks.
    pub async fn submit(
        self: &Arc<Self>,
        name: &str,
        params: Map<String, Value>,
        wait: bool,
    ) -> Result<CommandResult, ApiError> {
        let guard = self.dispatch.lock().await;
        let (ext, cmd) = name.split_once('.').ok_or_else(|| {
            ApiError::new(
                400,
                "Invalid command: Command name must be of the form <extension>.<name>",
            )
        })?;
        let busy = crate::panics::lock(&self.table)
            .last()
            .filter(|r| r.result.command_status == Status::Running)
            .map(|r| r.result.command_name.clone());
        if let Some(name) = busy {
            return Err(ApiError::busy(&name));
        }
        let spec = commands::lookup(ext, cmd, self.ctx.config.test_extension)?;
        if let Some(validate) = spec.validate {
            validate(&params).map_err(|e| {
                ApiError::new(400, format!("Invalid command parameters: {}", e.details))
            })?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("command", name = %name, id = %id);
        let mut record = CommandResult {
            id: id.clone(),
            command_name: cmd.to_string(),
            command_status: Status::Running,
            command_error: None,
            command_result: None,
        };
        let ctx = self.ctx.clone();
        let handler = spec.handler;
        let run = move || {
            let _e = tracing::Span::current().entered();
            handler(&ctx, params)
        };

        match spec.mode {
            Mode::Sync => {
                let outcome = run_blocking(run).instrument(span.clone()).await;
                let (status, result, error) = settle(outcome, cmd, false);
                span.in_scope(|| log_outcome(status, &error));
                record.command_status = status;
                record.command_result = result;
                record.command_error = error;
                self.push(record.clone());
                self.changed.send_modify(|n| *n += 1);
                Ok(record)
            }
            Mode::Async => {
                self.push(record.clone());
                span.in_scope(|| tracing::info!("started"));
                let me = self.clone();
                let short = cmd.to_string();
                let task_span = span.clone();
                tokio::spawn(
                    async move {
                        let outcome = run_blocking(run).await;
                        let (status, result, error) = settle(outcome, &short, true);
                        log_outcome(status, &error);
                        me.finish(&id, status, result, error);
                        me.finished.send_modify(|n| *n += 1);
                    }
                    .instrument(task_span),
                );
                drop(guard);
                if wait {
                    self.get(&record.id, true).await
                } else {
                    Ok(record)
                }
            }
        }
    }
}

/// Run a handler on a blocking thread. A panic in it (a bug) fails this command with an
/// error the conductor sees; the agent and its later commands go on.
async fn run_blocking<F>(f: F) -> Result<Outcome, CommandError>
where
    F: FnOnce() -> Result<Outcome, CommandError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(CommandError::exec(match e.try_into_panic() {
            Ok(payload) => format!(
                "internal error in the agent (a bug; please report it): {}",
                crate::panics::message(payload.as_ref())
            ),
            Err(e) => format!("internal error in the agent: {e}"),
        })),
    }
}

/// Map an outcome to IPA's result encoding: a string becomes `{"result": s}` (prefixed with
/// the command name for async commands), nothing becomes null, JSON passes through. Secrets
/// are masked here, before the result is stored, served or logged: step results echo the
/// step with its arguments (image credentials, config drives), errors quote URLs.
fn settle(
    outcome: Result<Outcome, CommandError>,
    cmd: &str,
    is_async: bool,
) -> (Status, Option<Value>, Option<Value>) {
    // Nothing a handler returns may panic the agent on its way out: if encoding or masking
    // did, the command fails with a fixed message (the text that broke it is not repeated:
    // it may hold the very secret the masking was for).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (status, mut result, mut error) = encode(outcome, cmd, is_async);
        for v in [&mut result, &mut error].into_iter().flatten() {
            crate::redact::value(v);
        }
        (status, result, error)
    }))
    .unwrap_or_else(|_| {
        (
            Status::Failed,
            None,
            Some(
                CommandError::exec(
                    "internal error in the agent while encoding the result (a bug; please report it)",
                )
                .to_json(),
            ),
        )
    })
}

fn encode(
    outcome: Result<Outcome, CommandError>,
    cmd: &str,
    is_async: bool,
) -> (Status, Option<Value>, Option<Value>) {
    match outcome {
        Ok(Outcome::Null) => (Status::Succeeded, None, None),
        Ok(Outcome::Text(s)) => {
            let s = if is_async { format!("{cmd}: {s}") } else { s };
            (
                Status::Succeeded,
                Some(serde_json::json!({ "result": s })),
                None,
            )
        }
        Ok(Outcome::Json(v)) => (Status::Succeeded, Some(v), None),
        Err(e) if e.kind == ErrorKind::VersionMismatch => {
            (Status::VersionMismatch, None, Some(e.to_json()))
        }
        Err(e) => (Status::Failed, None, Some(e.to_json())),
    }
}

fn log_outcome(status: Status, error: &Option<Value>) {
    match error {
        None => tracing::info!(?status, "finished"),
        Some(e) => tracing::warn!(?status, error = %e, "finished with an error"),
    }
}
