//! `tidings-bench`: a load generator for Tidings and any server speaking the
//! template-compatible pub/sub protocol (JSON text frames over WebSocket).
//!
//! * [`fanout`] — S subscribers, P publishers on one topic: delivered msgs/s, end-to-end
//!   latency, lost / duplicated / out-of-order.
//! * [`conns`] — C idle connections over several loopback source addresses: how many hold,
//!   and the server's RSS per connection.
//! * [`pingpong`] — K connections doing ping/pong round trips: round trips/s and latency.
//! * [`append`] — K connections appending event batches with expected versions: events/s,
//!   appends/s, latency and version conflicts (Tidings only: the template has no streams).
//! * [`publish`] — K connections publishing with `ref`, W in flight each: acknowledged
//!   (durable) publishes/s, latency to the ack, errors (Tidings only: the template has no acks).
//!
//! `--url` takes several comma-separated endpoints (nodes of one cluster: connections go
//! round-robin), `--server-pid` several pids (their CPU is added up and reported per pid),
//! `fanout --publish-url` puts the publishers on another node than the subscribers, and
//! `--redis-pid` reports a backing store's CPU apart.
//!
//! Shared pieces: [`client`] (target, tokens, handshake, frames), [`common`] (options,
//! connecting many, the report), [`stats`] (pure accounting), [`procfs`] (`/proc` readers).
//!
//! Every scenario targets loopback only, is bounded in count and in time, prints a
//! human-readable summary and then exactly one JSON line (the last line of stdout).

mod append;
mod client;
mod common;
mod conns;
mod fanout;
mod pingpong;
mod procfs;
mod publish;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for Tidings and template-compatible WebSocket pub/sub servers.
///
/// Prints a human-readable summary, then one JSON line with every number.
#[derive(Debug, Parser)]
#[command(name = "tidings-bench", version)]
struct Cli {
    /// Worker threads for the bench's own runtime (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,

    /// The scenario to run.
    #[command(subcommand)]
    command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Command {
    /// S subscribers and P publishers on one topic: throughput, latency, loss, order.
    Fanout {
        /// Where and how to connect.
        #[command(flatten)]
        common: common::CommonArgs,
        /// Scenario options.
        #[command(flatten)]
        args: fanout::FanoutArgs,
    },
    /// C idle connections held open: how many succeed, server RSS per connection.
    Conns {
        /// Where and how to connect.
        #[command(flatten)]
        common: common::CommonArgs,
        /// Scenario options.
        #[command(flatten)]
        args: conns::ConnsArgs,
    },
    /// K connections doing ping/pong round trips: round trips/s and latency.
    Pingpong {
        /// Where and how to connect.
        #[command(flatten)]
        common: common::CommonArgs,
        /// Scenario options.
        #[command(flatten)]
        args: pingpong::PingpongArgs,
    },
    /// K connections appending batches of E events with expected versions: events/s,
    /// appends/s, latency, conflicts.
    Append {
        /// Where and how to connect.
        #[command(flatten)]
        common: common::CommonArgs,
        /// Scenario options.
        #[command(flatten)]
        args: append::AppendArgs,
    },
    /// K connections publishing with `ref`, W in flight each: acknowledged publishes/s,
    /// latency to the `published` ack, errors.
    Publish {
        /// Where and how to connect.
        #[command(flatten)]
        common: common::CommonArgs,
        /// Scenario options.
        #[command(flatten)]
        args: publish::PublishArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidings-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Fanout { common, args } => fanout::run(common::Run::new(common)?, args).await,
            Command::Conns { common, args } => conns::run(common::Run::new(common)?, args).await,
            Command::Pingpong { common, args } => {
                pingpong::run(common::Run::new(common)?, args).await
            }
            Command::Append { common, args } => append::run(common::Run::new(common)?, args).await,
            Command::Publish { common, args } => {
                publish::run(common::Run::new(common)?, args).await
            }
        }
    });
    // Don't wait for tasks still parked on sockets: everything was reported.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
