//! The build-side graph.
//!
//! Each delayed call is one immutable [`Node`] holding its payload and strong references to the nodes it
//! depends on. Nothing is ever merged or copied while building, so a call costs one allocation whatever
//! the shape of the graph, and a part of the graph lives exactly as long as something refers to it.
//! Immutability also makes cycles impossible: a node can only depend on nodes that existed before it.

use std::sync::Arc;

use rustc_hash::FxHashSet;

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

/// Whether `node`'s handle is its only one, strong or weak: whoever holds that handle alone decides
/// when the node goes.
pub fn held_alone<D: ?Sized>(node: &Arc<Node<D>>) -> bool {
    Arc::strong_count(node) == 1 && Arc::weak_count(node) == 0
}

/// Calls `visit` once on each node the `roots` need, depth-first, walking the inputs of those it
/// returns `Ok(true)` for: a search for the nodes a computation of the roots would take results of
/// elsewhere (whose inputs it then does not need). Linear in nodes plus edges; the first error ends it.
pub fn visit_needed<'a, D: ?Sized + 'a, E>(
    roots: impl IntoIterator<Item = &'a Arc<Node<D>>>,
    mut visit: impl FnMut(&'a Arc<Node<D>>) -> Result<bool, E>,
) -> Result<(), E> {
    let mut seen: FxHashSet<*const ()> = FxHashSet::default();
    let mut stack: Vec<&'a Arc<Node<D>>> = Vec::new();
    for root in roots {
        if seen.insert(Arc::as_ptr(root).cast()) {
            stack.push(root);
        }
        while let Some(node) = stack.pop() {
            if !visit(node)? {
                continue;
            }
            for dep in node.deps() {
                // A node with one handle is reached through that edge alone (a root has a handle of
                // its own, and so does every node that takes the same input twice): no need to note it.
                if Arc::strong_count(dep) == 1 || seen.insert(Arc::as_ptr(dep).cast()) {
                    stack.push(dep);
                }
            }
        }
    }
    Ok(())
}

/// A node reached by a walk, with whether the walk's owner holds it alone.
type Reached<'a, D> = (&'a Arc<Node<D>>, bool);

/// Calls `visit` on the payload of each node that the owner of `roots` holds alone, among the first
/// `WALK` nodes of a breadth-first walk from them: each root with whether the owner holds it alone,
/// then every dependency in turn, held alone when its only handle is in a node held alone.
///
/// This is what a cycle collector may be shown of an owner (CPython's `tp_traverse`): only references
/// that are the owner's alone, since a collector that counts a shared one as the owner's concludes
/// that the objects behind it are garbage while the other holders still use them. The collector walks
/// an object several times in one collection and needs the later walks to show at least what the
/// first one did. Between them, handles may only be let go of (see the caller for why none is made),
/// which only adds nodes held alone; and the region walked is the same in every walk, because it is
/// chosen by the graph's shape alone (the first `WALK` nodes, shared ones included), never by which
/// are held alone, so a node held alone at one walk is visited at every later one.
///
/// `WALK` bounds each call: the collector walks young objects at every collection, and the last
/// call of a chain of a million calls holds all of it alone.
pub fn visit_held_alone<'a, D: ?Sized, E, const WALK: usize>(
    roots: &[Reached<'a, D>],
    mut visit: impl FnMut(&'a D) -> Result<(), E>,
) -> Result<(), E> {
    let mut walk: [Option<Reached<'a, D>>; WALK] = [None; WALK];
    let mut queued = 0;
    // Nodes held alone only have dependencies held alone below nodes held alone: once none is left
    // in the queue, no later node can be one.
    let mut alone_ahead = 0;
    for &root in roots.iter().take(WALK) {
        walk[queued] = Some(root);
        queued += 1;
        alone_ahead += usize::from(root.1);
    }
    for next in 0..WALK {
        if alone_ahead == 0 {
            break;
        }
        let Some((node, alone)) = walk[next] else {
            break;
        };
        if alone {
            alone_ahead -= 1;
            visit(node.payload())?;
        }
        for dep in node.deps() {
            if queued == WALK {
                break;
            }
            let dep_alone = alone && held_alone(dep);
            walk[queued] = Some((dep, dep_alone));
            queued += 1;
            alone_ahead += usize::from(dep_alone);
        }
    }
    Ok(())
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
    fn visit_needed_visits_each_needed_node_once_and_skips_the_inputs_of_those_it_refuses() {
        // 1 and 2 take 0 (shared); 3 takes 1 and 2, and 4 (below 2 alone) through 2; 5 takes 3 twice.
        let shared = Node::new(0u32, vec![]);
        let below = Node::new(4u32, vec![]);
        let one = Node::new(1u32, vec![Arc::clone(&shared)]);
        let two = Node::new(2u32, vec![Arc::clone(&shared), below]);
        let three = Node::new(3u32, vec![one, two]);
        let root = Node::new(5u32, vec![Arc::clone(&three), Arc::clone(&three)]);
        let walk = |refused: u32| {
            let mut seen = Vec::new();
            visit_needed::<_, ()>([&root, &three], |node| {
                seen.push(*node.payload());
                Ok(*node.payload() != refused)
            })
            .unwrap();
            seen.sort_unstable();
            seen
        };
        assert_eq!(walk(u32::MAX), [0, 1, 2, 3, 4, 5]);
        assert_eq!(walk(2), [0, 1, 2, 3, 5], "4 is needed by 2 alone");
        assert_eq!(walk(3), [3, 5], "the second root is 3 itself, seen already");
        let stopped = visit_needed([&root], |node| match *node.payload() {
            1 => Err("no"),
            _ => Ok(true),
        });
        assert_eq!(stopped, Err("no"));
    }

    fn visited<const WALK: usize>(roots: &[(&Arc<Node<u32>>, bool)]) -> Vec<u32> {
        let mut seen = Vec::new();
        visit_held_alone::<_, (), WALK>(roots, |&payload| {
            seen.push(payload);
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn only_nodes_held_alone_through_nodes_held_alone_are_visited() {
        let below_shared = Node::new(10u32, vec![]);
        let shared = Node::new(1, vec![below_shared]);
        let elsewhere = Arc::clone(&shared);
        let own = Node::new(2, vec![Node::new(20, vec![])]);
        let root = Node::new(0, vec![shared, own]);
        assert_eq!(visited::<64>(&[(&root, held_alone(&root))]), [0, 2, 20]);
        assert_eq!(visited::<64>(&[(&root, false)]), [] as [u32; 0]);
        drop(elsewhere);
        assert_eq!(visited::<64>(&[(&root, true)]), [0, 1, 2, 10, 20]);
        let weak = Arc::downgrade(&root);
        assert!(!held_alone(&root), "a weak handle can bring a node back");
        drop(weak);
        assert!(held_alone(&root));
    }

    #[test]
    fn a_walk_is_bounded_and_its_region_set_by_shape_alone() {
        let mut chain = Node::new(0u32, vec![]);
        for i in 1..1_000 {
            chain = Node::new(i, vec![chain]);
        }
        assert_eq!(visited::<4>(&[(&chain, true)]), [999, 998, 997, 996]);
        // The walk's first five nodes are the root, a, b, a1 and a2, whoever else holds a: b1 is never
        // reached, so letting go of a's other handle only adds to what is visited.
        let leaf = |n| Node::new(n, vec![]);
        let a = Node::new(1, vec![leaf(11), leaf(12), leaf(13)]);
        let root = Node::new(0, vec![Arc::clone(&a), Node::new(2, vec![leaf(21)])]);
        assert_eq!(visited::<5>(&[(&root, true)]), [0, 2]);
        drop(a);
        assert_eq!(visited::<5>(&[(&root, true)]), [0, 1, 2, 11, 12]);
    }

    #[test]
    fn a_visit_error_stops_the_walk() {
        let root = Node::new(0u32, vec![Node::new(1, vec![]), Node::new(2, vec![])]);
        let mut seen = Vec::new();
        let stopped = visit_held_alone::<_, u32, 64>(&[(&root, true)], |&payload| {
            seen.push(payload);
            if payload == 1 {
                Err(payload)
            } else {
                Ok(())
            }
        });
        assert_eq!((stopped, seen), (Err(1), vec![0, 1]));
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
