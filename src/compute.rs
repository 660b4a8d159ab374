//! One forward step as a ggml graph: a metadata context, the graph, and the
//! input data to upload once the allocator has placed the inputs. A built
//! step can be kept (`BuiltStep`) and run again with new input data.
//!
//! Inputs are declared by name. A replayed step binds each declared input
//! to the built graph's input of the same name, so the order in which the
//! attention and the model declare their inputs does not matter, and an
//! input of another shape is an error, not a wrong binding.

use std::collections::HashMap;

use anyhow::{bail, ensure};

use crate::ggml::{Context, GgmlType, Graph, GraphId, Scheduler, Tensor, TensorId, MAX_GRAPH_NODES};

/// Most nodes a step graph may have.
pub const MAX_NODES: usize = MAX_GRAPH_NODES;

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
    inputs: Vec<(String, Tensor<'a>, Data)>,
    /// When replaying: the built graph's inputs by name.
    replay: Option<&'a HashMap<String, TensorId>>,
    /// The first input declared wrongly (a name twice, or on replay one the
    /// built graph lacks or has in another shape); `run` reports it.
    error: Option<String>,
}

/// A step graph kept after it ran, allocated, to run again with new input
/// data: the graph stays valid while its allocator allocates nothing else.
pub struct BuiltStep {
    ctx: Context,
    ids: StepIds,
}

/// A built step's graph, inputs and output, as handles that do not borrow
/// its context (`Step::into_ids`).
pub struct StepIds {
    graph: GraphId,
    inputs: HashMap<String, TensorId>,
    output: TensorId,
}

impl BuiltStep {
    /// Keeps a step that ran: `ctx`, the context it was built in, and its handles.
    pub fn keep(ctx: Context, ids: StepIds) -> Self {
        Self { ctx, ids }
    }

    pub fn output(&self) -> Tensor<'_> {
        self.ctx.tensor(self.ids.output)
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
            error: None,
        }
    }

    /// Runs `built` again: input declarations give its input tensors of the
    /// same names their new data; nothing else is built.
    pub fn replay(built: &'a BuiltStep) -> Self {
        Self {
            ctx: &built.ctx,
            graph: built.ctx.graph(built.ids.graph),
            inputs: Vec::new(),
            replay: Some(&built.ids.inputs),
            error: None,
        }
    }

    /// The handles of this step, built with `output`, to keep it (`BuiltStep::keep`).
    pub fn into_ids(self, output: Tensor<'a>) -> StepIds {
        StepIds {
            graph: self.ctx.graph_id(&self.graph),
            inputs: self
                .inputs
                .iter()
                .map(|(name, t, _)| (name.clone(), self.ctx.id(*t)))
                .collect(),
            output: self.ctx.id(output),
        }
    }

    fn input(&mut self, name: &str, ty: GgmlType, ne: &[i64], data: Data) -> Tensor<'a> {
        let mut shape = [1i64; 4];
        shape[..ne.len()].copy_from_slice(ne);
        if self.inputs.iter().any(|(n, ..)| n == name) {
            self.fail(format!("step input {name} declared twice"));
        }
        let bound = self.replay.map(|built| built.get(name).map(|&id| self.ctx.tensor(id)));
        let t = match bound {
            None => self.ctx.new_tensor(ty, ne).set_name(name).set_input(),
            Some(Some(t)) if t.ty() == ty && t.ne() == shape => t,
            Some(found) => {
                let why = if found.is_some() { "has another shape" } else { "is new" };
                self.fail(format!("replayed step: input {name} {why}"));
                // Never allocated: `run` stops before computing.
                self.ctx.new_tensor(ty, ne)
            }
        };
        self.inputs.push((name.to_string(), t, data));
        t
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    pub fn input_i32(&mut self, name: &str, ne: &[i64], data: Vec<i32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(name, GgmlType::I32, ne, Data::I32(data))
    }

    pub fn input_f32(&mut self, name: &str, ne: &[i64], data: Vec<f32>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(name, GgmlType::F32, ne, Data::F32(data))
    }

    pub fn input_f16(&mut self, name: &str, ne: &[i64], data: Vec<half::f16>) -> Tensor<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        self.input(name, GgmlType::F16, ne, Data::F16(data))
    }

    /// Allocates the graph (unless replaying), uploads the inputs and runs it.
    pub fn run(&mut self, sched: &mut Scheduler) -> anyhow::Result<()> {
        if let Some(why) = &self.error {
            bail!("{why}");
        }
        match self.replay {
            Some(built) => ensure!(
                built.len() == self.inputs.len(),
                "replayed step: {} of the graph's {} inputs declared",
                self.inputs.len(),
                built.len()
            ),
            None => sched.alloc(&mut self.graph)?,
        }
        // Inputs the graph ended up not using have no memory: skip them.
        for (_, t, data) in self.inputs.iter().filter(|(_, t, _)| t.is_allocated()) {
            match data {
                Data::F32(d) => t.write_f32(d),
                Data::I32(d) => t.write_i32(d),
                Data::F16(d) => t.write_f16(d),
            }
        }
        sched.compute(&mut self.graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a + 2b over inputs declared in `order`; returns the output.
    fn declare<'a>(step: &mut Step<'a>, order: [&str; 2], a: [f32; 4], b: [f32; 4]) -> [Tensor<'a>; 2] {
        let mut out = [None, None];
        for name in order {
            let data = if name == "a" { a } else { b };
            out[usize::from(name == "b")] = Some(step.input_f32(name, &[4], data.to_vec()));
        }
        out.map(|t| t.expect("both declared"))
    }

    #[test]
    fn replayed_inputs_bind_by_name_and_a_wrong_shape_is_an_error() {
        let mut sched = Scheduler::cpu(1).unwrap();
        let ctx = Step::context();
        let mut step = Step::new(&ctx);
        let [a, b] = declare(&mut step, ["a", "b"], [1.0; 4], [1.0; 4]);
        let out = ctx.add(a, ctx.scale(b, 2.0)).set_output();
        step.graph.expand(out);
        step.run(&mut sched).unwrap();
        let ids = step.into_ids(out);
        let built = BuiltStep::keep(ctx, ids);

        // Declared the other way round: each name still gets its own data.
        let mut step = Step::replay(&built);
        declare(&mut step, ["b", "a"], [1.0, 2.0, 3.0, 4.0], [10.0; 4]);
        step.run(&mut sched).unwrap();
        let mut got = Vec::new();
        built.output().read_f32(&mut got);
        assert_eq!(got, [21.0, 22.0, 23.0, 24.0]);

        let mut step = Step::replay(&built);
        step.input_f32("a", &[5], vec![0.0; 5]);
        step.input_f32("b", &[4], vec![0.0; 4]);
        let err = step.run(&mut sched).unwrap_err().to_string();
        assert!(err.contains("input a has another shape"), "{err}");

        let mut step = Step::replay(&built);
        step.input_f32("a", &[4], vec![0.0; 4]);
        let err = step.run(&mut sched).unwrap_err().to_string();
        assert!(err.contains("1 of the graph's 2 inputs"), "{err}");
    }
}
