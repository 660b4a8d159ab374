//! ggml's devices: the CPU, GPUs of the backends this binary was built with
//! (Vulkan, CUDA, Metal), and remote devices served over ggml's RPC
//! protocol (llama.cpp's `rpc-server`), with their buffer types.

use std::ffi::{c_char, CStr, CString};
use std::net::{TcpStream, ToSocketAddrs};
use std::ptr::NonNull;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::sys;
use super::tensor::Tensor;

/// A device registered with ggml. Devices live as long as the process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Device {
    raw: NonNull<sys::ggml_backend_device>,
}

// SAFETY: devices are static registry entries, never freed; their queries
// are thread-safe in ggml (they read fixed properties or ask the driver).
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Reads a C string ggml owns (names, descriptions).
fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings that live as long as the
    // device or buffer type they describe (the whole process).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Device {
    /// Every device ggml knows: built-in backends, then added RPC servers.
    pub fn all() -> Vec<Device> {
        // SAFETY: registry queries; indices are below the count.
        unsafe {
            (0..sys::ggml_backend_dev_count())
                .filter_map(|i| NonNull::new(sys::ggml_backend_dev_get(i)))
                .map(|raw| Device { raw })
                .collect()
        }
    }

    /// The devices other than the CPU (what `--list-devices` shows).
    pub fn accelerators() -> Vec<Device> {
        Self::all().into_iter().filter(|d| !d.is_cpu()).collect()
    }

    pub fn cpu() -> anyhow::Result<Device> {
        // SAFETY: registry query; null (no CPU backend) is checked.
        let raw = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        NonNull::new(raw)
            .map(|raw| Device { raw })
            .context("ggml has no CPU device")
    }

    pub fn by_name(name: &str) -> Option<Device> {
        Self::all().into_iter().find(|d| d.name() == name)
    }

    pub(super) fn raw(self) -> *mut sys::ggml_backend_device {
        self.raw.as_ptr()
    }

    pub fn name(self) -> String {
        // SAFETY: valid device (see the type).
        c_str(unsafe { sys::ggml_backend_dev_name(self.raw()) })
    }

    pub fn description(self) -> String {
        // SAFETY: valid device.
        c_str(unsafe { sys::ggml_backend_dev_description(self.raw()) })
    }

    /// Free and total memory in bytes.
    pub fn memory(self) -> (usize, usize) {
        let (mut free, mut total) = (0, 0);
        // SAFETY: valid device; both out-pointers are live locals.
        unsafe { sys::ggml_backend_dev_memory(self.raw(), &mut free, &mut total) };
        (free, total)
    }

    pub fn is_cpu(self) -> bool {
        // SAFETY: valid device.
        unsafe { sys::ggml_backend_dev_type(self.raw()) == sys::GGML_BACKEND_DEVICE_TYPE_CPU }
    }

    /// Where tensors computed or stored on this device live.
    pub fn buffer_type(self) -> anyhow::Result<BufferType> {
        // SAFETY: valid device; null is checked.
        let raw = unsafe { sys::ggml_backend_dev_buffer_type(self.raw()) };
        NonNull::new(raw)
            .map(|raw| BufferType { raw })
            .with_context(|| format!("device {} has no buffer type", self.name()))
    }

    /// The extra memory kinds of this device's backend: for the CPU, ggml's
    /// repacked weight layouts (rows interleaved for its fastest kernels).
    pub fn extra_buffer_types(self) -> Vec<BufferType> {
        type GetExtra = unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *mut sys::ggml_backend_buffer_type_t;
        let name = CString::new("ggml_backend_dev_get_extra_bufts").expect("no NUL");
        // SAFETY: registry lookup; the function, when present, has the
        // signature ggml-backend.h gives `ggml_backend_dev_get_extra_bufts_t`
        // and returns a null-terminated static array.
        unsafe {
            let reg = sys::ggml_backend_dev_backend_reg(self.raw());
            let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            if f.is_null() {
                return Vec::new();
            }
            let get: GetExtra = std::mem::transmute(f);
            let mut p = get(self.raw());
            let mut out = Vec::new();
            while !p.is_null() && !(*p).is_null() {
                out.push(BufferType {
                    raw: NonNull::new_unchecked(*p),
                });
                p = p.add(1);
            }
            out
        }
    }

    /// Whether `weight` (a tensor without data yet), kept in memory `buft`,
    /// can be the matrix of a batched matmul on this device (as llama.cpp
    /// asks before placing a weight in a repacked layout).
    pub fn runs_matmul_with(self, buft: BufferType, weight: Tensor<'_>) -> bool {
        let scratch = super::Context::new(2, 0);
        let [n0, _, n2, n3] = weight.ne();
        let w = weight.raw();
        // SAFETY: `w` has no buffer (checked) and gets a zero-size dummy one
        // of `buft` only for the query, then none again; the matmul node
        // lives in `scratch`, which outlives the query.
        unsafe {
            if !(*w).buffer.is_null() || !(*w).data.is_null() {
                return false;
            }
            let b = sys::ggml_new_tensor_4d(scratch.raw(), sys::GGML_TYPE_F32, n0, 512, n2, n3);
            let op = sys::ggml_mul_mat(scratch.raw(), w, b);
            let dummy = sys::ggml_backend_buft_alloc_buffer(buft.raw.as_ptr(), 0);
            if dummy.is_null() {
                return false;
            }
            (*w).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(self.raw(), op);
            (*w).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }

    /// Whether this device can compute `op` (a graph node) itself.
    pub fn supports_op(self, op: Tensor<'_>) -> bool {
        // SAFETY: valid device and a live tensor (the borrow of its context).
        unsafe { sys::ggml_backend_dev_supports_op(self.raw(), op.raw()) }
    }
}

/// A kind of backend memory (a device's, or host memory).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BufferType {
    pub(super) raw: NonNull<sys::ggml_backend_buffer_type>,
}

// SAFETY: buffer types are static per device; queries are thread-safe.
unsafe impl Send for BufferType {}
unsafe impl Sync for BufferType {}

impl BufferType {
    /// Host memory, as ggml's CPU backend uses it.
    pub fn cpu() -> Self {
        // SAFETY: returns a static, never null.
        let raw = unsafe { sys::ggml_backend_cpu_buffer_type() };
        Self {
            raw: NonNull::new(raw).expect("ggml's CPU buffer type is static"),
        }
    }

    pub fn name(self) -> String {
        // SAFETY: valid buffer type.
        c_str(unsafe { sys::ggml_backend_buft_name(self.raw.as_ptr()) })
    }

    /// The largest buffer of this memory (a device's single allocation).
    pub fn max_size(self) -> usize {
        // SAFETY: valid buffer type.
        unsafe { sys::ggml_backend_buft_get_max_size(self.raw.as_ptr()) }
    }

    pub(super) fn alignment(self) -> usize {
        // SAFETY: valid buffer type.
        unsafe { sys::ggml_backend_buft_get_alignment(self.raw.as_ptr()) }
    }

    /// Bytes `t` takes in this memory (some devices pad rows).
    pub(super) fn alloc_size(self, t: Tensor<'_>) -> usize {
        // SAFETY: valid buffer type and live tensor.
        unsafe { sys::ggml_backend_buft_get_alloc_size(self.raw.as_ptr(), t.raw()) }
    }
}

/// ggml's RPC registry and one of its functions, looked up by name (the
/// bindings do not include `ggml-rpc.h`).
fn rpc_proc(name: &str) -> anyhow::Result<*mut std::ffi::c_void> {
    let reg_name = CString::new("RPC").expect("no NUL");
    let proc_name = CString::new(name).expect("no NUL");
    // SAFETY: registry lookups with NUL-terminated names; nulls checked.
    unsafe {
        let reg = sys::ggml_backend_reg_by_name(reg_name.as_ptr());
        anyhow::ensure!(!reg.is_null(), "this build has no RPC backend");
        let f = sys::ggml_backend_reg_get_proc_address(reg, proc_name.as_ptr());
        anyhow::ensure!(!f.is_null(), "ggml's RPC backend lacks {name}");
        Ok(f)
    }
}

/// Checks that `endpoint` (HOST:PORT) accepts connections: ggml aborts the
/// process when it cannot connect, so this is asked first.
fn check_reachable(endpoint: &str) -> anyhow::Result<()> {
    let addrs: Vec<_> = endpoint
        .to_socket_addrs()
        .with_context(|| format!("RPC server {endpoint}: not a HOST:PORT address"))?
        .collect();
    let reachable = addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(5)).is_ok());
    anyhow::ensure!(reachable, "RPC server {endpoint} does not accept connections");
    Ok(())
}

/// Connects to an RPC server (`infllm rpc-server` or llama.cpp's) and adds
/// its devices; returns them.
pub fn add_rpc_server(endpoint: &str) -> anyhow::Result<Vec<Device>> {
    check_reachable(endpoint)?;
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    let f = rpc_proc("ggml_backend_rpc_add_server")?;
    let c_endpoint = CString::new(endpoint).context("NUL in an RPC address")?;
    // SAFETY: the address is ggml's `ggml_backend_rpc_add_server`, whose
    // signature `AddServer` restates from ggml-rpc.h; the returned registry
    // is static and registered once (ggml keeps one per endpoint).
    unsafe {
        let add: AddServer = std::mem::transmute(f);
        let reg = add(c_endpoint.as_ptr());
        anyhow::ensure!(!reg.is_null(), "cannot add RPC server {endpoint}");
        let known = Device::all();
        let devices: Vec<Device> = (0..sys::ggml_backend_reg_dev_count(reg))
            .filter_map(|i| NonNull::new(sys::ggml_backend_reg_dev_get(reg, i)))
            .map(|raw| Device { raw })
            .collect();
        if !devices.iter().all(|d| known.contains(d)) {
            sys::ggml_backend_register(reg);
        }
        Ok(devices)
    }
}

/// Serves `devices` over ggml's RPC protocol at `endpoint` until the
/// process ends. `cache_dir`: where the server caches large tensors.
pub fn serve_rpc(endpoint: &str, cache_dir: Option<&str>, n_threads: usize, devices: &[Device]) -> anyhow::Result<()> {
    if devices.is_empty() {
        bail!("no device to serve");
    }
    type StartServer = unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);
    let f = rpc_proc("ggml_backend_rpc_start_server")?;
    let c_endpoint = CString::new(endpoint).context("NUL in the address")?;
    let c_cache = cache_dir
        .map(CString::new)
        .transpose()
        .context("NUL in the cache path")?;
    let mut raw: Vec<sys::ggml_backend_dev_t> = devices.iter().map(|d| d.raw()).collect();
    // SAFETY: the address is ggml's `ggml_backend_rpc_start_server` with the
    // signature of ggml-rpc.h; every pointer outlives the call (it returns
    // only when the server cannot start).
    unsafe {
        let start: StartServer = std::mem::transmute(f);
        start(
            c_endpoint.as_ptr(),
            c_cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            n_threads,
            raw.len(),
            raw.as_mut_ptr(),
        );
    }
    bail!("the RPC server at {endpoint} could not start (is the port in use?)")
}

/// What a ggml failure message is followed by (the devices in use).
static ABORT_CONTEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes a failure inside ggml (a device that stops answering, memory it
/// cannot get) end the process with one line naming `context` and exit
/// code 1, instead of an abort with a backtrace. Session files are written
/// whole or not at all (renamed into place), so none is left half-written.
pub fn exit_on_ggml_abort(context: String) {
    unsafe extern "C" fn on_abort(message: *const c_char) {
        let context = ABORT_CONTEXT.get().map_or("", String::as_str);
        eprintln!("error: {} ({context})", abort_reason(&c_str(message)));
        // SAFETY: `_exit` ends the process without unwinding through ggml's
        // C++ frames or running destructors that could touch the failed device.
        unsafe { libc::_exit(1) }
    }
    let _ = ABORT_CONTEXT.set(context);
    // SAFETY: installs a callback with the signature ggml expects.
    unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
}

/// ggml's "path/file.cpp:123: reason" as "reason", on one line.
fn abort_reason(message: &str) -> String {
    let reason = message
        .split_once(".cpp:")
        .or_else(|| message.split_once(".c:"))
        .and_then(|(_, rest)| rest.split_once(": "))
        .map_or(message, |(_, reason)| reason);
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn abort_messages_lose_the_source_path_and_line_breaks() {
        let m = "/x/ggml-rpc.cpp:566: Remote RPC server crashed\nor returned malformed response\n";
        assert_eq!(
            super::abort_reason(m),
            "Remote RPC server crashed or returned malformed response"
        );
        assert_eq!(super::abort_reason("out of memory"), "out of memory");
    }
}
