//! The build-side graph.
//!
//! Each delayed call is one immutable [`Node`] holding its payload and strong references to the nodes it
//! depends on. Nothing is ever merged or copied while building, so a call costs one allocation whatever
//! the shape of the graph, and a part of the graph lives exactly as long as something refers to it.
//! Immutability also makes cycles impossible: a node can only depend on nodes that existed before it.

use std::sync::Arc;

/// What the engine needs to know about a payload while flattening.
pub trait Payload {
    /// A name under which identical tasks are merged (dask's deterministic keys): two nodes with the same
    /// name are computed once. `None` means the node is identified by itself alone.
    fn merge_name(&self) -> Option<&str> {
        None
    }
}

/// One call of the build-side graph: what to run (`payload`) on which other nodes' results. Immutable
/// once made, so graphs built from nodes are acyclic by construction.
///
/// A graph's nodes are `Node<P>`. `P` may be unsized (a payload ending in a trait object): a node is
/// then made as a `Node<P, Concrete>`, whose payload is last so that its `Arc` coerces to
/// `Arc<Node<P>>`, and the payload's closure lives in the node's own allocation instead of a box of
/// its own.
pub struct Node<D: ?Sized, P: ?Sized = D> {
    deps: Box<[Arc<Node<D>>]>,
    payload: P,
}

impl<D: ?Sized, P> Node<D, P> {
    /// A node running `payload` on the results of `deps`.
    pub fn new(payload: P, deps: Vec<Arc<Node<D>>>) -> Arc<Self> {
        Arc::new(Node {
            deps: deps.into_boxed_slice(),
            payload,
        })
    }
}

impl<D: ?Sized, P: ?Sized> Node<D, P> {
    /// The nodes whose results this one takes as inputs, in argument order (repeats kept).
    pub fn deps(&self) -> &[Arc<Node<D>>] {
        &self.deps
    }

    /// What this node runs.
    pub fn payload(&self) -> &P {
        &self.payload
    }
}

impl<D: ?Sized, P: ?Sized> std::fmt::Debug for Node<D, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("deps", &self.deps.len())
            .finish_non_exhaustive()
    }
}

impl<D: ?Sized, P: ?Sized> Drop for Node<D, P> {
    /// Dropping a chain of a million calls recursively would overflow the stack, so the last owner of a
    /// node unlinks its dependencies onto an explicit stack instead. (`get_mut` rather than
    /// `into_inner`, which an unsized node cannot be moved out by: should two threads let go of a
    /// node's last two handles at once, neither sees itself last, and the node's own `drop` unlinks
    /// its dependencies in turn.)
    fn drop(&mut self) {
        unlink(std::mem::take(&mut self.deps), || ());
    }
}

/// How many nodes a paced release lets go of between two calls of its `pace`.
pub const RELEASE_STEP: usize = 1024;

/// Lets go of the nodes only `node` holds, as dropping it would, calling `pace` after every
/// [`RELEASE_STEP`] of them: a front whose payloads are freed under a lock other threads wait for
/// (Python objects, under the interpreter's) can hand the lock over between steps. Nothing happens
/// while `node` has other owners; the node itself goes when its own handle does.
pub fn release_paced<D: ?Sized>(node: &mut Arc<Node<D>>, pace: impl FnMut()) {
    if let Some(owned) = Arc::get_mut(node) {
        unlink(std::mem::take(&mut owned.deps), pace);
    }
}

fn unlink<D: ?Sized>(deps: Box<[Arc<Node<D>>]>, mut pace: impl FnMut()) {
    let mut orphans = deps.into_vec();
    let mut released = 0usize;
    while let Some(mut dep) = orphans.pop() {
        if let Some(owned) = Arc::get_mut(&mut dep) {
            orphans.extend(std::mem::take(&mut owned.deps).into_vec());
        }
        drop(dep);
        released += 1;
        if released % RELEASE_STEP == 0 {
            pace();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Payload for u32 {}

    #[test]
    fn a_paced_release_paces_every_step_and_frees_only_what_the_node_alone_holds() {
        let shared = Node::new(0u32, vec![]);
        let mut deps: Vec<Arc<Node<u32>>> = (1..=3 * RELEASE_STEP as u32)
            .map(|i| Node::new(i, vec![]))
            .collect();
        deps.push(Arc::clone(&shared));
        let mut root = Node::new(u32::MAX, deps);
        let also_held = Arc::clone(&root);
        let mut paces = 0;
        release_paced(&mut root, || paces += 1);
        assert_eq!(
            paces, 0,
            "another owner holds the root: nothing is released"
        );
        drop(also_held);
        release_paced(&mut root, || paces += 1);
        assert_eq!(
            paces, 3,
            "3 * RELEASE_STEP + 1 nodes released, a pace after each full step"
        );
        assert_eq!(
            Arc::strong_count(&shared),
            1,
            "the shared node's other handle is let go of"
        );
        assert!(root.deps().is_empty());
    }

    #[test]
    fn dropping_a_long_chain_does_not_overflow_the_stack() {
        let mut head = Node::new(0u32, vec![]);
        for i in 1..1_000_000 {
            head = Node::new(i, vec![head]);
        }
        drop(head);
    }

    #[test]
    fn unsized_payloads_are_read_through_their_node_and_long_chains_of_them_drop() {
        type Erased = dyn Fn() -> u32 + Send + Sync;
        let leaf: Arc<Node<Erased, _>> = Node::new(|| 7, vec![]);
        let leaf: Arc<Node<Erased>> = leaf;
        let mut head = Arc::clone(&leaf);
        for i in 0..1_000_000u32 {
            let next: Arc<Node<Erased, _>> = Node::new(move || i, vec![head]);
            head = next;
        }
        assert_eq!((head.payload())(), 999_999);
        assert_eq!((head.deps()[0].payload())(), 999_998);
        drop(head);
        assert_eq!(Arc::strong_count(&leaf), 1);
        assert_eq!((leaf.payload())(), 7);
    }

    #[test]
    fn shared_dependencies_survive_while_referenced() {
        let shared = Node::new(1u32, vec![]);
        let a = Node::new(2u32, vec![shared.clone(), shared.clone()]);
        drop(a);
        assert_eq!(Arc::strong_count(&shared), 1);
        assert_eq!(*shared.payload(), 1);
    }
}
