use clap::Parser;

use infllm::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse_from(cli::normalize_args(std::env::args_os()));
    infllm::ggml::set_quiet_logs(std::env::var_os("INFLLM_GGML_LOG").is_none());
    let result = match &cli.command {
        Some(Command::Tokenize(a)) => cli::tokenize::run(a),
        Some(Command::Passkey(a)) => cli::passkey::run(a),
        Some(Command::Bench(a)) => cli::bench::run(a),
        Some(Command::RpcServer(a)) => cli::rpc_server::run(a),
        None => cli::generate::run(&cli.generate),
    };
    if let Err(e) = result {
        eprintln!("{}", cli::error_line(&e));
        std::process::exit(1);
    }
}
