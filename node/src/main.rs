//! `kestrel`: the node binary.

mod cli;
mod config;
mod db;
mod disk;
mod fatal;
mod keys;
mod keystore;
mod memory;
mod node;
mod replay;
mod testnet;
mod validator;

use clap::{CommandFactory, FromArgMatches, parser::ValueSource};

/// mimalloc: the parallel executor's threads free what other threads allocated, which contends on
/// glibc's arenas (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> eyre::Result<()> {
    memory::setup_allocator();
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A command whose stdout is its report logs to stderr.
    let writer = if matches!(
        cli.command,
        cli::Command::CheckDatadir(_) | cli::Command::Replay(_) | cli::Command::Db(_)
    ) {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    };
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        cli::Command::Node(mut args) => {
            fatal::exit_on_panic();
            if let Some(path) = args.config.clone() {
                let given = matches.subcommand_matches("node").expect("node subcommand");
                config::Config::load(&path)?.apply(&mut args, |id| {
                    matches!(
                        given.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                });
            }
            node::run(*args)
        }
        cli::Command::Keygen(args) => Ok(keys::keygen(&args)?),
        cli::Command::InitTestnet(args) => Ok(testnet::run(&args)?),
        cli::Command::CheckDatadir(args) => validator::check::run(&args),
        cli::Command::Replay(args) => replay::run(&args),
        cli::Command::Db(cli::DbCommand::Stats(args)) => db::stats(&args),
    }
}
