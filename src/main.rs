use clap::Parser;

use infllm::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse_from(cli::normalize_args(std::env::args_os()));
    infllm::ggml::set_quiet_logs(true);
    let result = match &cli.command {
        Some(Command::Tokenize(a)) => cli::tokenize::run(a),
        Some(Command::Passkey(a)) => cli::passkey::run(a),
        Some(Command::Bench(a)) => cli::bench::run(a),
        None => cli::generate::run(&cli.generate),
    };
    if let Err(e) = result {
        eprintln!("{}", cli::error_line(&e));
        std::process::exit(1);
    }
}
