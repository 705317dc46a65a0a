//! The compute-side graph: one flat arena per computation.
//!
//! Invariants, established by [`Plan::flatten`] and checked by [`Graph::from_deps`]:
//! - task ids are dense, `0..len`;
//! - every dependency of a task has a smaller id (ids are a topological order), so the arena is acyclic;
//! - ids are a depth-first post-order from the roots, so the tasks of one branch are contiguous and a
//!   smaller id means "needed sooner by a sequential evaluation". The scheduler uses ids as priorities.

use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::node::{Node, Payload};
use crate::Error;

/// A task's place in a [`Graph`]: dense, and a topological order (see the module's invariants).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TaskId(pub u32);

impl TaskId {
    /// The id as an index into per-task arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    fn from_index<E>(index: usize) -> Result<Self, Error<E>> {
        u32::try_from(index)
            .map(TaskId)
            .map_err(|_| Error::TooLarge(index + 1))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Dependencies and dependents of every task, as two compressed adjacency lists.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    dep_start: Vec<u32>,
    deps: Vec<TaskId>,
    dependent_start: Vec<u32>,
    dependents: Vec<TaskId>,
}

impl Graph {
    /// Builds an arena from each task's dependency list, in id order. Fails on a dependency that does not
    /// come before its dependent, which is exactly what rules out cycles and dangling ids.
    pub fn from_deps<E, I, D>(dep_lists: I) -> Result<Self, Error<E>>
    where
        I: IntoIterator<Item = D>,
        D: IntoIterator<Item = TaskId>,
    {
        let mut builder = GraphBuilder::default();
        for deps in dep_lists {
            let task = TaskId::from_index(builder.len())?;
            for dep in deps {
                if dep >= task {
                    return Err(Error::InvalidGraph(format!(
                        "task {task} depends on {dep}, which does not come before it (a cycle or an unknown task)"
                    )));
                }
                builder.deps.push(dep);
            }
            builder.close_task();
        }
        Ok(builder.finish())
    }

    /// How many tasks the graph has.
    pub fn len(&self) -> usize {
        self.dep_start.len() - 1
    }

    /// Whether the graph has no task.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tasks whose results `task` takes, in argument order (repeats kept).
    pub fn deps(&self, task: TaskId) -> &[TaskId] {
        let i = task.index();
        &self.deps[self.dep_start[i] as usize..self.dep_start[i + 1] as usize]
    }

    /// The tasks that take `task`'s result, once per use.
    pub fn dependents(&self, task: TaskId) -> &[TaskId] {
        let i = task.index();
        &self.dependents[self.dependent_start[i] as usize..self.dependent_start[i + 1] as usize]
    }

    /// Every task id, in order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = TaskId> {
        (0..self.len() as u32).map(TaskId)
    }
}

#[derive(Default)]
struct GraphBuilder {
    dep_start: Vec<u32>,
    deps: Vec<TaskId>,
}

impl GraphBuilder {
    fn len(&self) -> usize {
        self.dep_start.len()
    }

    fn close_task(&mut self) {
        self.dep_start.push(self.deps.len() as u32);
    }

    /// Derives the dependents lists by counting sort, so flattening stays linear in tasks plus edges.
    fn finish(self) -> Graph {
        let n = self.dep_start.len();
        let mut dep_start = Vec::with_capacity(n + 1);
        dep_start.push(0);
        dep_start.extend(self.dep_start);
        let mut dependent_start = vec![0u32; n + 1];
        for dep in &self.deps {
            dependent_start[dep.index() + 1] += 1;
        }
        for i in 0..n {
            dependent_start[i + 1] += dependent_start[i];
        }
        let mut fill = dependent_start.clone();
        let mut dependents = vec![TaskId(0); self.deps.len()];
        for task in 0..n {
            for dep in &self.deps[dep_start[task] as usize..dep_start[task + 1] as usize] {
                let slot = &mut fill[dep.index()];
                dependents[*slot as usize] = TaskId(task as u32);
                *slot += 1;
            }
        }
        Graph {
            dep_start,
            deps: self.deps,
            dependent_start,
            dependents,
        }
    }
}

/// A node taking the place of another in [`Plan::flatten_standing_in`], and that node (if any beyond
/// the nodes under its merge name).
pub type StandIn<P> = (Arc<Node<P>>, Option<Arc<Node<P>>>);

/// The part of a build-side graph that some roots need, flattened for one computation.
#[derive(Debug)]
pub struct Plan<P: ?Sized> {
    /// The tasks and their dependencies.
    pub graph: Graph,
    /// The node behind each task id.
    pub nodes: Vec<Arc<Node<P>>>,
    /// The task computing each root, in the order the roots were given (repeats kept).
    pub outputs: Vec<TaskId>,
}

impl<P: Payload + ?Sized> Plan<P> {
    /// Walks the graph once from the roots, iteratively (chains of millions of calls are fine), merging
    /// nodes that share a [`Payload::merge_name`]. Linear in nodes plus edges.
    pub fn flatten<'a, E>(
        roots: impl IntoIterator<Item = &'a Arc<Node<P>>>,
    ) -> Result<Self, Error<E>>
    where
        P: 'a,
    {
        Self::flatten_visiting(roots, |_| ())
    }

    /// [`Plan::flatten`], showing `visit` each task's payload as the task gets its id, in id order.
    /// A pass over every task's payload costs a cache miss per task once the graph outgrows the
    /// caches (a million nodes do); made here, it finds the node just loaded by the walk.
    pub fn flatten_visiting<'a, E>(
        roots: impl IntoIterator<Item = &'a Arc<Node<P>>>,
        visit: impl FnMut(&P),
    ) -> Result<Self, Error<E>>
    where
        P: 'a,
    {
        Self::flatten_standing_in(&[], roots, visit)
    }

    /// [`Plan::flatten_visiting`], where each `(stand_in, original)` of `stand_ins` takes the place of
    /// `original` (that very node, if given) and of every node under the stand-in's merge name, whose
    /// inputs are then not walked: a result already at hand for a task of the graph. The stand-ins are
    /// walked first, and are not among the outputs.
    pub fn flatten_standing_in<'a, E>(
        stand_ins: &'a [StandIn<P>],
        roots: impl IntoIterator<Item = &'a Arc<Node<P>>>,
        mut visit: impl FnMut(&P),
    ) -> Result<Self, Error<E>>
    where
        P: 'a,
    {
        let mut ids: FxHashMap<*const (), TaskId> = FxHashMap::default();
        let mut names: FxHashMap<&'a str, TaskId> = FxHashMap::default();
        let mut nodes: Vec<Arc<Node<P>>> = Vec::new();
        let mut builder = GraphBuilder::default();
        let mut outputs = Vec::new();
        // Each node being walked, the next of its inputs to visit, and whether a single edge reaches
        // it (see `single_edge`).
        let mut stack: Vec<(&'a Arc<Node<P>>, usize, bool)> = Vec::new();
        // The ids of the inputs found so far of each node on `stack`, in argument order.
        let mut input_ids: Vec<TaskId> = Vec::new();
        let roots: Vec<&'a Arc<Node<P>>> = stand_ins
            .iter()
            .map(|(stand_in, _)| stand_in)
            .chain(roots)
            .collect();
        let mut root_ptrs: Vec<*const ()> = roots.iter().map(|root| address(root)).collect();
        root_ptrs.sort_unstable();
        // A node reached by a single edge is never looked up again, so it stays out of `ids`, whose
        // inserts and lookups were the walk's main cost. Single: no other handle on it exists (a
        // clone made later from that edge can only go into nodes outside this graph, which is
        // immutable), no root is borrowed from that edge, and it has no merge name through which
        // another node could stand for it.
        let single_edge = |node: &Arc<Node<P>>| {
            Arc::strong_count(node) == 1
                && node.payload().merge_name().is_none()
                && root_ptrs.binary_search(&address(node)).is_err()
        };

        for (index, root) in roots.into_iter().enumerate() {
            if index == stand_ins.len() {
                // Walked: each original is known as its stand-in from here on.
                for ((_, original), &id) in stand_ins.iter().zip(&outputs) {
                    if let Some(original) = original {
                        ids.insert(address(original), id);
                    }
                }
            }
            if let Some(id) = known(root, &mut ids, &names) {
                outputs.push(id);
                continue;
            }
            stack.push((root, 0, false));
            while let Some((node, next_dep, single)) = stack.last_mut() {
                if let Some(dep) = node.deps().get(*next_dep) {
                    *next_dep += 1;
                    let single = single_edge(dep);
                    match (!single).then(|| known(dep, &mut ids, &names)).flatten() {
                        Some(id) => input_ids.push(id),
                        None => stack.push((dep, 0, single)),
                    }
                    continue;
                }
                let (node, single): (&'a Arc<Node<P>>, bool) = (node, *single);
                stack.pop();
                let id = TaskId::from_index(nodes.len())?;
                let first_input = input_ids.len() - node.deps().len();
                builder.deps.extend(input_ids.drain(first_input..));
                builder.close_task();
                if !single {
                    ids.insert(address(node), id);
                }
                if let Some(name) = node.payload().merge_name() {
                    if let Entry::Vacant(slot) = names.entry(name) {
                        slot.insert(id);
                    }
                }
                visit(node.payload());
                nodes.push(Arc::clone(node));
                match stack.is_empty() {
                    true => outputs.push(id),
                    false => input_ids.push(id),
                }
            }
        }
        outputs.drain(..stand_ins.len());
        Ok(Plan {
            graph: builder.finish(),
            nodes,
            outputs,
        })
    }
}

/// The id a node already has, directly or because an earlier node carries its merge name; in the second
/// case the node is merged before its own inputs are visited.
fn known<'a, P: Payload + ?Sized>(
    node: &'a Arc<Node<P>>,
    ids: &mut FxHashMap<*const (), TaskId>,
    names: &FxHashMap<&'a str, TaskId>,
) -> Option<TaskId> {
    if let Some(&id) = ids.get(&address(node)) {
        return Some(id);
    }
    let id = *names.get(node.payload().merge_name()?)?;
    ids.insert(address(node), id);
    Some(id)
}

/// A node's identity: its address alone, one word to hash and compare, without the vtable pointer an
/// unsized payload's handle carries.
fn address<P: ?Sized>(node: &Arc<Node<P>>) -> *const () {
    Arc::as_ptr(node).cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(Option<&'static str>);
    impl Payload for Named {
        fn merge_name(&self) -> Option<&str> {
            self.0
        }
    }

    fn leaf(name: Option<&'static str>) -> Arc<Node<Named>> {
        Node::new(Named(name), vec![])
    }

    fn flatten(roots: &[Arc<Node<Named>>]) -> Plan<Named> {
        Plan::flatten::<()>(roots).unwrap()
    }

    #[test]
    fn ids_are_a_depth_first_post_order() {
        let (a, b, c, d) = (leaf(None), leaf(None), leaf(None), leaf(None));
        let ab = Node::new(Named(None), vec![a, b]);
        let cd = Node::new(Named(None), vec![c, d]);
        let root = Node::new(Named(None), vec![ab.clone(), cd.clone()]);
        let plan = flatten(&[root]);
        assert_eq!(plan.graph.len(), 7);
        assert!(Arc::ptr_eq(&plan.nodes[2], &ab));
        assert!(Arc::ptr_eq(&plan.nodes[5], &cd));
        assert_eq!(plan.graph.deps(TaskId(6)), &[TaskId(2), TaskId(5)]);
        assert_eq!(plan.graph.dependents(TaskId(0)), &[TaskId(2)]);
        assert_eq!(plan.outputs, vec![TaskId(6)]);
    }

    #[test]
    fn shared_nodes_and_repeated_roots_appear_once() {
        let shared = leaf(None);
        let x = Node::new(Named(None), vec![shared.clone(), shared.clone()]);
        let y = Node::new(Named(None), vec![shared.clone()]);
        let plan = flatten(&[x.clone(), y, x]);
        assert_eq!(plan.graph.len(), 3);
        assert_eq!(plan.graph.deps(TaskId(1)), &[TaskId(0), TaskId(0)]);
        assert_eq!(
            plan.graph.dependents(TaskId(0)),
            &[TaskId(1), TaskId(1), TaskId(2)]
        );
        assert_eq!(plan.outputs, vec![TaskId(1), TaskId(2), TaskId(1)]);
    }

    #[test]
    fn nodes_with_the_same_name_merge() {
        let first = Node::new(Named(Some("inc-1")), vec![leaf(None)]);
        let twin = Node::new(Named(Some("inc-1")), vec![leaf(None)]);
        let other = Node::new(Named(Some("inc-2")), vec![]);
        let plan = flatten(&[first, twin, other]);
        assert_eq!(plan.graph.len(), 3);
        assert_eq!(plan.outputs, vec![TaskId(1), TaskId(1), TaskId(2)]);
    }

    /// A stand-in takes the place of its original node (unnamed) and of a node under its name, and
    /// the inputs of those are never walked; it is no output of its own.
    #[test]
    fn stand_ins_replace_their_originals_and_namesakes_with_their_inputs() {
        let original = Node::new(Named(None), vec![leaf(None)]);
        let namesake = Node::new(Named(Some("inc-1")), vec![leaf(None)]);
        let root = Node::new(Named(None), vec![original.clone(), namesake, leaf(None)]);
        let stand_ins = [(leaf(None), Some(original)), (leaf(Some("inc-1")), None)];
        let plan = Plan::flatten_standing_in::<()>(&stand_ins, [&root], |_| ()).unwrap();
        assert_eq!(plan.graph.len(), 4);
        assert_eq!(
            plan.graph.deps(TaskId(3)),
            &[TaskId(0), TaskId(1), TaskId(2)]
        );
        assert!(Arc::ptr_eq(&plan.nodes[0], &stand_ins[0].0));
        assert!(Arc::ptr_eq(&plan.nodes[1], &stand_ins[1].0));
        assert_eq!(plan.outputs, vec![TaskId(3)]);
    }

    /// Nodes held by one edge only skip the walk's map of ids: a named one must still merge with
    /// its twin, and a root passed twice by the same reference, or borrowed from another root's
    /// inputs, must still be one task.
    #[test]
    fn nodes_held_once_still_merge_by_name_and_a_root_passed_twice_is_one_task() {
        let a = Node::new(Named(None), vec![Node::new(Named(Some("load")), vec![])]);
        let b = Node::new(Named(None), vec![Node::new(Named(Some("load")), vec![])]);
        let root = Node::new(Named(None), vec![a, b]);
        let plan = Plan::flatten::<()>([&root, &root, &root.deps()[1]]).unwrap();
        assert_eq!(plan.graph.len(), 4);
        assert_eq!(plan.graph.deps(TaskId(2)), &[TaskId(0)], "the twin merged");
        assert_eq!(plan.graph.deps(TaskId(3)), &[TaskId(1), TaskId(2)]);
        assert_eq!(plan.outputs, vec![TaskId(3), TaskId(3), TaskId(2)]);
    }

    /// The visitor sees each task's payload once, in id order: a twin merged by name, a shared node
    /// and a repeated root are not shown again.
    #[test]
    fn the_visitor_sees_each_task_once_in_id_order() {
        let shared = Node::new(Named(Some("shared")), vec![]);
        let a = Node::new(Named(Some("a")), vec![shared.clone(), shared.clone()]);
        let twin = Node::new(Named(Some("a")), vec![leaf(Some("unseen"))]);
        let b = Node::new(Named(Some("b")), vec![shared, leaf(Some("leaf"))]);
        let mut seen = Vec::new();
        let plan = Plan::flatten_visiting::<()>([&a, &twin, &b, &a], |payload: &Named| {
            seen.push(payload.0.unwrap())
        })
        .unwrap();
        assert_eq!(seen, ["shared", "a", "leaf", "b"]);
        let in_id_order: Vec<&str> = plan.nodes.iter().map(|n| n.payload().0.unwrap()).collect();
        assert_eq!(seen, in_id_order);
    }

    #[test]
    fn a_million_long_chain_flattens_without_recursion() {
        let mut head = leaf(None);
        for _ in 0..1_000_000 {
            head = Node::new(Named(None), vec![head]);
        }
        let plan = flatten(&[head]);
        assert_eq!(plan.graph.len(), 1_000_001);
        assert_eq!(plan.graph.deps(TaskId(1_000_000)), &[TaskId(999_999)]);
    }

    #[test]
    fn from_deps_rejects_forward_and_self_references() {
        let err = Graph::from_deps::<(), _, _>([vec![], vec![TaskId(1)]]).unwrap_err();
        assert!(err.to_string().contains("does not come before it"), "{err}");
        let err = Graph::from_deps::<(), _, _>([vec![TaskId(3)]]).unwrap_err();
        assert!(matches!(err, Error::InvalidGraph(_)));
        let ok =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)], vec![TaskId(0), TaskId(1)]]);
        assert_eq!(ok.unwrap().dependents(TaskId(0)), &[TaskId(1), TaskId(2)]);
    }
}
