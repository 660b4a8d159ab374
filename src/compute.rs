//! One forward step as a ggml graph: a metadata context, the graph, and the
//! input data to upload once the allocator has placed the inputs.

use crate::ggml::{Backend, Context, Graph, GraphAllocator, Tensor, TYPE_F16, TYPE_F32, TYPE_I32};

/// Most nodes a step graph may have (a 64-layer model uses ~2,500).
pub const MAX_NODES: usize = 16_384;

enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    F16(Vec<half::f16>),
}

/// Builds one step graph. Inputs are declared with their data, which is
/// written after allocation.
pub struct Step<'a> {
    pub ctx: &'a Context,
    pub graph: Graph<'a>,
    inputs: Vec<(Tensor<'a>, Data)>,
}

impl<'a> Step<'a> {
    /// A context with room for a step graph.
    pub fn context() -> Context {
        Context::new(MAX_NODES * 2, MAX_NODES)
    }

    pub fn new(ctx: &'a Context) -> Self {
        Self {
            ctx,
            graph: ctx.new_graph(MAX_NODES),
            inputs: Vec::new(),
        }
    }

    fn input(&mut self, ty: u32, ne: &[i64], data: Data) -> Tensor<'a> {
        let t = self.ctx.new_tensor(ty, ne).set_input();
        self.inputs.push((t, data));
        t
    }

    pub fn input_i32(&mut self, ne: &[i64], data: Vec<i32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(TYPE_I32, ne, Data::I32(data))
    }

    pub fn input_f32(&mut self, ne: &[i64], data: Vec<f32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(TYPE_F32, ne, Data::F32(data))
    }

    pub fn input_f16(&mut self, ne: &[i64], data: Vec<half::f16>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(TYPE_F16, ne, Data::F16(data))
    }

    /// Allocates the graph, uploads the inputs and runs it.
    pub fn run(&mut self, backend: &mut Backend, alloc: &mut GraphAllocator) -> anyhow::Result<()> {
        alloc.alloc(&mut self.graph)?;
        // Inputs the graph ended up not using have no memory: skip them.
        for (t, data) in self.inputs.iter().filter(|(t, _)| t.is_allocated()) {
            match data {
                Data::F32(d) => t.write_f32(d),
                Data::I32(d) => t.write_i32(d),
                Data::F16(d) => t.write_f16(d),
            }
        }
        backend.compute(&mut self.graph)
    }
}
