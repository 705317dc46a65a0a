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
pub struct Node<P> {
    deps: Box<[Arc<Node<P>>]>,
    payload: P,
}

impl<P> Node<P> {
    /// A node running `payload` on the results of `deps`.
    pub fn new(payload: P, deps: Vec<Arc<Node<P>>>) -> Arc<Self> {
        Arc::new(Node {
            deps: deps.into_boxed_slice(),
            payload,
        })
    }

    /// The nodes whose results this one takes as inputs, in argument order (repeats kept).
    pub fn deps(&self) -> &[Arc<Node<P>>] {
        &self.deps
    }

    /// What this node runs.
    pub fn payload(&self) -> &P {
        &self.payload
    }
}

impl<P> std::fmt::Debug for Node<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("deps", &self.deps.len())
            .finish_non_exhaustive()
    }
}

impl<P> Drop for Node<P> {
    /// Dropping a chain of a million calls recursively would overflow the stack, so the last owner of a
    /// node unlinks its dependencies onto an explicit stack instead.
    fn drop(&mut self) {
        let mut orphans = std::mem::take(&mut self.deps).into_vec();
        while let Some(dep) = orphans.pop() {
            if let Some(mut owned) = Arc::into_inner(dep) {
                orphans.extend(std::mem::take(&mut owned.deps).into_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Payload for u32 {}

    #[test]
    fn dropping_a_long_chain_does_not_overflow_the_stack() {
        let mut head = Node::new(0u32, vec![]);
        for i in 1..1_000_000 {
            head = Node::new(i, vec![head]);
        }
        drop(head);
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
