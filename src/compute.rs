//! One forward step as a ggml graph: a metadata context, the graph, and the
//! input data to upload once the allocator has placed the inputs. A built
//! step can be kept (`BuiltStep`) and run again with new input data.

use crate::ggml::{Backend, Context, GgmlType, Graph, GraphAllocator, GraphId, Tensor, TensorId};

/// Most nodes a step graph may have (a 64-layer model uses ~2,500).
pub const MAX_NODES: usize = 16_384;

enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
    F16(Vec<half::f16>),
}

/// Builds one step graph, or replays one built before (`Step::replay`).
/// Inputs are declared with their data, which is written after allocation.
pub struct Step<'a> {
    pub ctx: &'a Context,
    pub graph: Graph<'a>,
    inputs: Vec<(Tensor<'a>, Data)>,
    /// When replaying: the built graph's inputs, in declaration order, which
    /// this step's declarations must match.
    replay: Option<&'a [TensorId]>,
}

/// A step graph kept after it ran, allocated, to run again with new input
/// data: the graph stays valid while its allocator allocates nothing else.
pub struct BuiltStep {
    ctx: Context,
    graph: GraphId,
    inputs: Vec<TensorId>,
    output: TensorId,
}

impl BuiltStep {
    /// Keeps a step that ran: `ctx`, the context it was built in, and its
    /// graph, inputs (`Step::ids`) and output.
    pub fn keep(ctx: Context, graph: GraphId, inputs: Vec<TensorId>, output: TensorId) -> Self {
        Self {
            ctx,
            graph,
            inputs,
            output,
        }
    }

    pub fn output(&self) -> Tensor<'_> {
        self.ctx.tensor(self.output)
    }
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
            replay: None,
        }
    }

    /// Runs `built` again: the same input declarations, in the same order,
    /// give its input tensors their new data; nothing else is built.
    pub fn replay(built: &'a BuiltStep) -> Self {
        Self {
            ctx: &built.ctx,
            graph: built.ctx.graph(built.graph),
            inputs: Vec::new(),
            replay: Some(&built.inputs),
        }
    }

    /// The graph and input handles, to keep the step as a `BuiltStep`.
    pub fn ids(&self) -> (GraphId, Vec<TensorId>) {
        let inputs = self.inputs.iter().map(|(t, _)| self.ctx.id(*t)).collect();
        (self.ctx.graph_id(&self.graph), inputs)
    }

    fn input(&mut self, ty: GgmlType, ne: &[i64], data: Data) -> Tensor<'a> {
        let t = match self.replay {
            Some(ids) => {
                let t = self.ctx.tensor(ids[self.inputs.len()]);
                let mut shape = [1i64; 4];
                shape[..ne.len()].copy_from_slice(ne);
                assert!(t.ty() == ty && t.ne() == shape, "replayed step declared another input");
                t
            }
            None => self.ctx.new_tensor(ty, ne).set_input(),
        };
        self.inputs.push((t, data));
        t
    }

    pub fn input_i32(&mut self, ne: &[i64], data: Vec<i32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(GgmlType::I32, ne, Data::I32(data))
    }

    pub fn input_f32(&mut self, ne: &[i64], data: Vec<f32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(GgmlType::F32, ne, Data::F32(data))
    }

    pub fn input_f16(&mut self, ne: &[i64], data: Vec<half::f16>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(GgmlType::F16, ne, Data::F16(data))
    }

    /// Allocates the graph (unless replaying), uploads the inputs and runs it.
    pub fn run(&mut self, backend: &mut Backend, alloc: &mut GraphAllocator) -> anyhow::Result<()> {
        match self.replay {
            Some(ids) => assert_eq!(ids.len(), self.inputs.len(), "replayed step declared fewer inputs"),
            None => alloc.alloc(&mut self.graph)?,
        }
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
