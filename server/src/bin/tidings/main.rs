//! The `tidings` binary: `serve` runs the server, `check-config` validates settings, `backup`
//! copies the SQLite store while the server runs, `token` mints a token.
//!
//! Settings come from (lowest to highest priority) built-in defaults, a TOML file
//! (`--config`), `TIDINGS_*` environment variables, and flags (`settings.rs`).

mod backup;
mod serve;
mod settings;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tidings_server::TokenSpec;

use settings::{ServeArgs, Settings};

#[derive(Parser)]
#[command(
    name = "tidings",
    version = tidings_server::VERSION,
    about = "Real-time pub/sub and event-streaming server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Validate the settings exactly as `serve` would (flags, env, TOML), print the effective
    /// configuration with secrets redacted, and exit non-zero with the reason if one is bad.
    CheckConfig(Box<ServeArgs>),
    /// Copy the SQLite store to DEST, consistently, while the server runs.
    Backup(Box<backup::BackupArgs>),
    /// Mint an HS256 client token and print it.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The identity (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Lifetime, e.g. `1h`, `30m`, `7d`; `0s` mints a token without `exp`. [default: 1h]
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Topic glob the token may subscribe to; repeatable. [default: any topic]
    #[arg(long)]
    subscribe: Vec<String>,
    /// Topic glob the token may publish to; repeatable. [default: any topic]
    #[arg(long)]
    publish: Vec<String>,
    /// JSON for the token's `info` claim, shown by presence, e.g. '{"name":"Alice"}'. [default: none]
    #[arg(long, value_parser = parse_json)]
    info: Option<serde_json::Value>,
    /// The server's HS256 secret.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => token(args),
        Command::Serve(args) => serve::run(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Backup(args) => backup::run(&args),
    }
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    // A token signed with a secret the server refuses would never work.
    if args.jwt_secret.len() < tidings_server::MIN_SECRET_BYTES {
        return Err(tidings_server::ConfigError::WeakSecret {
            len: args.jwt_secret.len(),
        }
        .into());
    }
    let spec = TokenSpec {
        info: args.info,
        sub: args.sub,
        ttl: (!args.ttl.is_zero()).then_some(args.ttl),
        subscribe: args.subscribe,
        publish: args.publish,
    };
    println!("{}", tidings_server::mint_token(&args.jwt_secret, &spec)?);
    Ok(())
}

fn check_config(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args)?;
    println!("{}", settings.redacted_toml()?);
    tidings_server::check_config(&settings.config)?;
    eprintln!("configuration ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
