//! earlywarn: a rule-based early-warning alerting daemon.
//!
//! The crate reads like the pipeline it runs:
//!
//! - [`feeds`]: files in. Decoding, parsing CSV / JSON into records, watching folders.
//! - [`event`]: one record as typed field values.
//! - [`rules`]: loading rule files, the `when` condition language, the rule engine.
//! - [`alerts`]: routing and redaction per partner, rendering the email.
//! - [`pipeline`]: the batch step every path calls (rows → engine → alerts →
//!   routing → rendering → a `Ledger`), with the one tick rule.
//! - [`store`]: the SQLite database: checkpoints, rule state, the durable outbox.
//! - [`delivery`]: mail out, over SMTP or to files, with retries.
//! - [`daemon`]: the long-running process that ties these together.
//! - [`ops`]: self-alerts to the ops partners; [`metrics`]: the Prometheus endpoint;
//!   [`web`]: the console; [`accept`]: what accept loops share.
//! - [`replay`]: the same pipeline offline, with a simulated clock.
//! - [`report`]: what the command line prints (status, alerts, replay, check and test results).
//! - [`review`]: approving or dismissing alerts held for review; [`audit`]: who did what;
//!   [`accounts`]: console accounts, logins and sessions.
//! - [`ruletest`]: `earlywarn test`, rule tests for the people who write rules.
//! - [`config`], [`diagnostic`]: the config file and `file:line:col` errors.
//! - [`display`]: untrusted text escaped for logs and terminals.
//! - [`web`]: the console, server-rendered pages served by the daemon when `[web]` is set.
//!
//! The core (`event`, `feeds::parse`, `feeds::decode`, `rules`, `alerts`) does
//! no I/O and never reads the clock: callers pass `now`.

pub mod accept;
pub mod accounts;
pub mod ack;
pub mod alerts;
pub mod audit;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod diagnostic;
pub mod display;
pub mod event;
pub mod feeds;
pub mod lifecycle;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod replay;
pub mod report;
pub mod review;
pub mod rules;
pub mod ruletest;
pub mod store;
pub mod web;
