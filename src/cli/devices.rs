//! Device flags as llama.cpp spells them: `--list-devices`, `-dev`, `-ngl`,
//! `-sm`, `-ts`, `-mg`, `--rpc`.

use anyhow::{bail, Context as _};
use clap::Args;

use super::limits;
use crate::ggml::{self, Device};
use crate::placement::{GpuLayers, Offload, SplitMode};

/// `--block-cache` at most (16 TiB): its bytes must fit a `usize`.
const MAX_BLOCK_CACHE_MIB: u64 = 1 << 24;

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Print the available devices and exit
    #[arg(long = "list-devices", help_heading = "Devices")]
    pub list_devices: bool,
    /// Devices to offload to, comma-separated (`none`: the CPU alone)
    /// [default: every device]
    #[arg(long = "device", value_name = "DEV1,DEV2,..", help_heading = "Devices")]
    pub device: Option<String>,
    /// Layers to offload: a count, `auto` or `all` [default: auto, which
    /// here is all when there is a device]
    #[arg(
        long = "n-gpu-layers",
        visible_alias = "gpu-layers",
        value_name = "N",
        allow_negative_numbers = true,
        help_heading = "Devices"
    )]
    pub n_gpu_layers: Option<GpuLayers>,
    /// How layers spread over several devices
    #[arg(long = "split-mode", value_enum, default_value = "layer", help_heading = "Devices")]
    pub split_mode: SplitMode,
    /// Share of the layers per device, numbers >= 0, e.g. 3,1 [default: by
    /// free memory]
    #[arg(
        long = "tensor-split",
        value_name = "N0,N1,..",
        value_delimiter = ',',
        value_parser = limits::share,
        help_heading = "Devices"
    )]
    pub tensor_split: Vec<f32>,
    /// The device of `-sm none`, an index into the devices used, 0..=255
    #[arg(
        long = "main-gpu",
        value_name = "INDEX",
        default_value_t = 0,
        value_parser = limits::count(0, 255),
        help_heading = "Devices"
    )]
    pub main_gpu: usize,
    /// Keep CPU weights in the file's layout (no repacking for faster kernels)
    #[arg(long = "no-repack", overrides_with = "repack", help_heading = "Devices")]
    pub no_repack: bool,
    /// Repack CPU weights for ggml's faster kernels where it can [default]
    #[arg(long = "repack", overrides_with = "no_repack", help_heading = "Devices")]
    pub repack: bool,
    /// Device memory for InfLLM's memory blocks, MiB per device (fractions
    /// allowed), 0..=16777216 [default: a quarter of the device's free
    /// memory]; past it, the blocks retrieved most recently
    // Parsed into bytes.
    #[arg(long = "block-cache", value_name = "MiB", value_parser = limits::mib_bytes(MAX_BLOCK_CACHE_MIB),
          help_heading = "Devices")]
    pub block_cache: Option<usize>,
    /// RPC servers to offload to (`infllm rpc-server` or llama.cpp's)
    #[arg(long = "rpc", value_name = "HOST:PORT,..", help_heading = "Devices")]
    pub rpc: Option<String>,
}

impl DeviceArgs {
    /// Connects the RPC servers, then reads which devices and how many layers.
    pub fn offload(&self) -> anyhow::Result<Offload> {
        self.connect_rpc()?;
        let devices = self.devices()?;
        let names: Vec<String> = devices
            .iter()
            .map(|d| format!("{} {}", d.name(), d.description()))
            .collect();
        ggml::exit_on_ggml_abort(match names.is_empty() {
            true => "on the CPU".into(),
            false => format!("devices: {}", names.join(", ")),
        });
        Ok(Offload {
            devices,
            gpu_layers: self.n_gpu_layers.unwrap_or(GpuLayers::Auto),
            split: self.split_mode,
            main_gpu: self.main_gpu,
            tensor_split: self.tensor_split.clone(),
            repack: !self.no_repack,
        })
    }

    fn connect_rpc(&self) -> anyhow::Result<()> {
        let Some(servers) = &self.rpc else { return Ok(()) };
        for endpoint in servers.split(',').filter(|s| !s.is_empty()) {
            ggml::add_rpc_server(endpoint)?;
        }
        Ok(())
    }

    fn devices(&self) -> anyhow::Result<Vec<Device>> {
        let Some(names) = &self.device else {
            return Ok(Device::accelerators());
        };
        if names == "none" {
            return Ok(Vec::new());
        }
        names
            .split(',')
            .map(|name| match Device::by_name(name).filter(|d| !d.is_cpu()) {
                Some(d) => Ok(d),
                None => bail!("invalid device: {name} (see --list-devices)"),
            })
            .collect()
    }

    /// `--list-devices`: prints the devices (as llama.cpp does) if asked;
    /// returns whether it did.
    pub fn list_if_asked(&self) -> anyhow::Result<bool> {
        if !self.list_devices {
            return Ok(false);
        }
        self.connect_rpc().context("listing devices")?;
        println!("Available devices:");
        let devices = Device::accelerators();
        if devices.is_empty() {
            println!("  (none)");
        }
        for d in devices {
            let (free, total) = d.memory();
            println!(
                "  {}: {} ({} MiB, {} MiB free)",
                d.name(),
                d.description(),
                total >> 20,
                free >> 20
            );
        }
        Ok(true)
    }
}
