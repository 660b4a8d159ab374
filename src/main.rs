use infllm::cli::{self, signals, Cli, Command};

fn main() {
    let cli = parse_args();
    if let Err(e) = signals::catch_file_size_limit() {
        eprintln!("{}", cli::error_line(&e));
        std::process::exit(1);
    }
    match cli.log.settings() {
        Ok(settings) => infllm::log::configure(settings),
        Err(e) => {
            eprintln!("{}", cli::error_line(&e));
            std::process::exit(1);
        }
    }
    // INFLLM_GGML_LOG: ggml prints its own log, all of it.
    if std::env::var_os("INFLLM_GGML_LOG").is_none() {
        infllm::ggml::forward_logs();
    }
    let result = match &cli.command {
        Some(Command::Tokenize(a)) => cli::tokenize::run(a),
        Some(Command::Passkey(a)) => cli::passkey::run(a),
        Some(Command::Perplexity(a)) => cli::perplexity::run(a),
        Some(Command::Bench(a)) => cli::bench::run(a),
        Some(Command::RpcServer(a)) => cli::rpc_server::run(a),
        Some(Command::Serve(a)) => infllm::server::run(a),
        None => cli::generate::run(&cli.generate),
    };
    match result {
        Ok(()) => {}
        // A signal stopped the work: a line, and the signal's exit code.
        Err(e) if e.is::<signals::Stopped>() => {
            eprintln!("infllm: {e}");
            signals::exit(e.downcast_ref::<signals::Stopped>().map_or(130, |s| s.code));
        }
        Err(e) => {
            infllm::log::failure(&cli::error_line(&e));
            signals::exit(1);
        }
    }
}

/// The flags; a bad one is a one-line error with exit code 1, as every
/// other bad input (`--help` and `--version` print as usual).
fn parse_args() -> Cli {
    match cli::parse(std::env::args_os().collect(), &|var| std::env::var(var).ok()) {
        Ok(cli) => cli,
        Err(cli::ParseError::Info(e)) => e.exit(),
        Err(cli::ParseError::Line(line)) => {
            eprintln!("{line}");
            std::process::exit(1);
        }
    }
}
