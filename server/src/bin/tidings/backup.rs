//! `tidings backup DEST`: an online, consistent copy of the SQLite store.
//!
//! It reads the data dir from the same settings as `serve` (`--config`, `TIDINGS_DATA_DIR`,
//! `--data-dir`) and copies the database with SQLite's online backup API while the server
//! keeps running: the copy is one consistent snapshot (a transaction boundary), never a torn
//! mix of pages, and the WAL never has to be copied by hand. Restore by putting the copy in a
//! data dir as `tidings.db` (docs/operations.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tidings_server::StoreKind;

use crate::settings::{ServeArgs, Settings};

/// `tidings backup` arguments.
#[derive(Args)]
pub struct BackupArgs {
    /// Where to write the copy: a file, or a directory (then `DEST/tidings.db`).
    dest: PathBuf,
    /// Replace DEST if it exists.
    #[arg(long)]
    force: bool,
    /// The server's settings (only the store kind and data dir are used).
    #[command(flatten)]
    settings: ServeArgs,
}

/// Copy the store to `args.dest` and print what was copied.
pub fn run(args: &BackupArgs) -> anyhow::Result<()> {
    let settings = Settings::load(&args.settings)?;
    let config = &settings.config;
    if config.store != StoreKind::Sqlite {
        anyhow::bail!(
            "the store is `{}`: nothing on disk to back up",
            config.store.as_str()
        );
    }
    let dest = if args.dest.is_dir() {
        args.dest.join("tidings.db")
    } else {
        args.dest.clone()
    };
    if dest.exists() && !args.force {
        anyhow::bail!("{} exists; pass --force to replace it", dest.display());
    }
    let report = tidings_server::backup(&config.data_dir, &dest, args.force)
        .with_context(|| format!("back up {}", config.data_dir.display()))?;
    println!(
        "backed up {} ({} pages, {} bytes) to {}; integrity check: ok",
        config.data_dir.join("tidings.db").display(),
        report.pages,
        report.bytes,
        dest.display()
    );
    Ok(())
}
