//! `kestrel`: the node binary.

mod cli;
mod node;

use clap::Parser;

fn main() -> eyre::Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        cli::Command::Node(args) => node::run(args),
    }
}
