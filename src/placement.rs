//! Which device holds each layer's weights and cache: `-ngl`, `-dev`, `-sm`,
//! `-ts` and `-mg` decide it as llama.cpp does. The last `-ngl` layers,
//! counting the output layer as the one after the last block, go to the
//! devices, split in the proportions of `-ts` (default: the devices' free
//! memory); the rest, and the token embeddings, stay on the CPU.

use anyhow::{bail, ensure};

use crate::ggml::Device;

/// How many layers to offload (`-ngl`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GpuLayers {
    /// llama.cpp's `auto` (its default); here: every layer, with a device.
    Auto,
    /// Every layer and the output (`all`, or a count above the layers).
    All,
    Count(usize),
}

impl std::str::FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "-1" => Ok(Self::Auto),
            "all" => Ok(Self::All),
            _ => match s.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Self::Count(n as usize)),
                Ok(n) if n <= -2 => Ok(Self::All),
                _ => Err(format!("'{s}' is not a layer count, 'auto' or 'all'")),
            },
        }
    }
}

/// `-sm`: spread layers over the devices, or keep them on one.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum SplitMode {
    None,
    Layer,
}

/// What the flags ask for.
#[derive(Debug, Clone)]
pub struct Offload {
    /// Devices to use, in order (empty: CPU only).
    pub devices: Vec<Device>,
    pub gpu_layers: GpuLayers,
    pub split: SplitMode,
    /// `-mg`: the device of `-sm none`, an index into `devices`.
    pub main_gpu: usize,
    /// `-ts`: a proportion per device (empty: by free memory).
    pub tensor_split: Vec<f32>,
    /// Weights on the CPU in ggml's repacked layouts where it has them
    /// (`--no-repack` turns it off).
    pub repack: bool,
}

impl Offload {
    pub fn cpu() -> Self {
        Self {
            devices: Vec::new(),
            gpu_layers: GpuLayers::Count(0),
            split: SplitMode::Layer,
            main_gpu: 0,
            tensor_split: Vec::new(),
            repack: true,
        }
    }
}

/// Where each layer lives: `None` is the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    layers: Vec<Option<Device>>,
    output: Option<Device>,
}

impl Placement {
    pub fn cpu(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
            output: None,
        }
    }

    pub fn new(req: &Offload, n_layer: usize) -> anyhow::Result<Self> {
        let devices = chosen_devices(req)?;
        if devices.is_empty() {
            return Ok(Self::cpu(n_layer));
        }
        let n_gpu = match req.gpu_layers {
            GpuLayers::Auto | GpuLayers::All => n_layer + 1,
            GpuLayers::Count(n) => n.min(n_layer + 1),
        };
        let shares = cumulative_shares(req, &devices)?;
        let mut at = assign(n_layer, n_gpu, &shares)
            .into_iter()
            .map(|i| i.map(|i| devices[i]));
        Ok(Self {
            layers: at.by_ref().take(n_layer).collect(),
            output: at.next().flatten(),
        })
    }

    /// The device of block `il` (None: the CPU).
    pub fn layer(&self, il: usize) -> Option<Device> {
        self.layers.get(il).copied().flatten()
    }

    /// The device of a weight, by its GGUF name.
    pub fn tensor(&self, name: &str) -> Option<Device> {
        if let Some(rest) = name.strip_prefix("blk.") {
            let il = rest.split('.').next().and_then(|n| n.parse::<usize>().ok());
            return il.and_then(|il| self.layer(il));
        }
        if name.starts_with("output.") || name.starts_with("output_norm.") {
            return self.output;
        }
        None
    }

    /// The devices used, in the order of the layers.
    pub fn devices(&self) -> Vec<Device> {
        let mut out: Vec<Device> = Vec::new();
        for d in self.layers.iter().chain([&self.output]).flatten() {
            if !out.contains(d) {
                out.push(*d);
            }
        }
        out
    }

    /// "layers 10-29 and the output on RPC0, ..." (empty on the CPU alone).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for d in self.devices() {
            let ils: Vec<usize> = (0..self.layers.len()).filter(|&il| self.layer(il) == Some(d)).collect();
            let mut what = match (ils.first(), ils.last()) {
                (Some(a), Some(b)) if a == b => format!("layer {a}"),
                (Some(a), Some(b)) => format!("layers {a}-{b}"),
                _ => String::new(),
            };
            if self.output == Some(d) {
                what = if what.is_empty() {
                    "the output".into()
                } else {
                    format!("{what} and the output")
                };
            }
            parts.push(format!("{what} on {}", d.name()));
        }
        parts.join(", ")
    }
}

/// The device index of each of `n_layer` + 1 layers (the output last):
/// the last `n_gpu` are offloaded, each to the device whose cumulative
/// share covers its position among them.
fn assign(n_layer: usize, n_gpu: usize, shares: &[f32]) -> Vec<Option<usize>> {
    let first = n_layer + 1 - n_gpu;
    (0..=n_layer)
        .map(|il| {
            (il >= first).then(|| {
                let at = (il - first) as f32 / n_gpu as f32;
                shares.iter().position(|&s| at < s).unwrap_or(shares.len() - 1)
            })
        })
        .collect()
}

/// The devices layers may go to: all of `-dev`'s, or `-mg`'s alone.
fn chosen_devices(req: &Offload) -> anyhow::Result<Vec<Device>> {
    if req.gpu_layers == GpuLayers::Count(0) || req.devices.is_empty() {
        return Ok(Vec::new());
    }
    if req.split == SplitMode::None {
        let Some(d) = req.devices.get(req.main_gpu) else {
            bail!("-mg {}: there are only {} devices", req.main_gpu, req.devices.len());
        };
        return Ok(vec![*d]);
    }
    Ok(req.devices.clone())
}

/// Each device's upper bound in [0, 1] of the offloaded layers.
fn cumulative_shares(req: &Offload, devices: &[Device]) -> anyhow::Result<Vec<f32>> {
    let weights: Vec<f32> = if devices.len() == 1 {
        vec![1.0]
    } else if req.tensor_split.is_empty() {
        devices.iter().map(|d| d.memory().0 as f32).collect()
    } else {
        ensure!(
            req.tensor_split.len() <= devices.len(),
            "-ts gives {} proportions for {} devices",
            req.tensor_split.len(),
            devices.len()
        );
        let mut w = req.tensor_split.clone();
        w.resize(devices.len(), 0.0);
        w
    };
    ensure!(
        weights.iter().all(|w| w.is_finite() && *w >= 0.0),
        "-ts proportions must be numbers >= 0"
    );
    let total: f32 = weights.iter().sum();
    ensure!(total > 0.0, "-ts proportions add up to 0");
    let mut acc = 0.0;
    Ok(weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_layer_counts_parse_as_llama_cpp_reads_them() {
        assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
        assert_eq!("-1".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
        assert_eq!("all".parse::<GpuLayers>(), Ok(GpuLayers::All));
        assert_eq!("-2".parse::<GpuLayers>(), Ok(GpuLayers::All));
        assert_eq!("99".parse::<GpuLayers>(), Ok(GpuLayers::Count(99)));
        assert!("x".parse::<GpuLayers>().is_err());
    }

    #[test]
    fn layers_go_from_the_last_backwards_in_the_split_proportions() {
        // -ngl 99 over two equal devices: 31 layers (the output last), split in half.
        let a = assign(30, 31, &[0.5, 1.0]);
        assert!(a[..16].iter().all(|&d| d == Some(0)));
        assert!(a[16..].iter().all(|&d| d == Some(1)));
        // -ngl 30 of 30 blocks: the output counts as a layer, block 0 stays.
        let a = assign(30, 30, &[1.0]);
        assert_eq!(a[0], None);
        assert!(a[1..].iter().all(|&d| d == Some(0)));
        // -ngl 1: the output alone.
        let a = assign(30, 1, &[1.0]);
        assert_eq!(a.iter().flatten().count(), 1);
        assert_eq!(a[30], Some(0));
    }

    #[test]
    fn without_devices_everything_stays_on_the_cpu() {
        let mut req = Offload::cpu();
        req.gpu_layers = GpuLayers::All;
        let p = Placement::new(&req, 4).unwrap();
        assert_eq!(p, Placement::cpu(4));
        assert!(p.tensor("output.weight").is_none());
    }
}
