//! `infllm rpc-server`: serves this machine's devices over ggml's RPC
//! protocol, the one llama.cpp's `rpc-server` speaks, so either side of a
//! connection can be infllm or llama.cpp.

use std::net::IpAddr;

use anyhow::bail;
use clap::Args;

use crate::ggml::{self, Device};

#[derive(Args, Debug)]
pub struct RpcServerArgs {
    /// Address to listen on
    #[arg(short = 'H', long = "host", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on, 1..=65535
    #[arg(short = 'p', long = "port", default_value_t = 50052, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Devices to serve, comma-separated [default: every device but the
    /// CPU, or the CPU when there is none]
    #[arg(short = 'd', long = "device", value_name = "DEV1,DEV2,..")]
    pub device: Option<String>,
    /// Threads of the CPU device, 1..=1024; at most one per core runs
    /// [default: all cores]
    #[arg(short = 't', long = "threads", value_parser = super::limits::count(1, super::limits::MAX_THREADS))]
    pub threads: Option<usize>,
    /// Directory where the server caches large tensors it receives
    #[arg(short = 'c', long = "cache", value_name = "DIR")]
    pub cache: Option<String>,
    /// Listen on an address other than loopback. ggml's RPC protocol has no
    /// authentication: anyone who reaches the port can run graphs on the
    /// served devices and read or write their memory
    #[arg(long = "rpc-allow-remote")]
    pub allow_remote: bool,
}

pub fn run(a: &RpcServerArgs) -> anyhow::Result<()> {
    let loopback = a.host == "localhost" || a.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && !a.allow_remote {
        bail!(
            "--host {} is not a loopback address: ggml's RPC protocol has no authentication, so anyone who reaches \
             the port could use this machine's devices and memory; add --rpc-allow-remote to serve it anyway",
            a.host
        );
    }
    let devices = served_devices(a.device.as_deref())?;
    let threads = super::limits::threads(a.threads);
    ggml::set_quiet_logs(false);
    ggml::serve_rpc(&format!("{}:{}", a.host, a.port), a.cache.as_deref(), threads, &devices)
}

fn served_devices(names: Option<&str>) -> anyhow::Result<Vec<Device>> {
    let Some(names) = names else {
        let accelerators = Device::accelerators();
        return match accelerators.is_empty() {
            true => Ok(vec![Device::cpu()?]),
            false => Ok(accelerators),
        };
    };
    names
        .split(',')
        .map(|name| Device::by_name(name).ok_or_else(|| anyhow::anyhow!("invalid device: {name} (see --list-devices)")))
        .collect()
}
