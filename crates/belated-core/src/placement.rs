//! Where a ready task should run when results live with worker groups (worker processes that keep
//! what they computed): a policy, with no I/O, used by runners' [`Runner::place`](crate::Runner::place).
//!
//! Policy: the group from which the fewest bytes would have to move, that is the one holding most of
//! the task's input bytes. Every held input weighs at least a byte, so tiny inputs still attract their
//! consumer. A task none of whose inputs is held by a group is not placed (any group may take it; the
//! schedule shares initial tasks out in runs, one per group).

/// The group holding most of the input bytes, given each held input as `(group, bytes)`; ties go to
/// the lowest group. `None` when no input is held by any of the `groups`.
pub fn most_input_bytes(
    groups: usize,
    held: impl IntoIterator<Item = (usize, u64)>,
) -> Option<usize> {
    let mut bytes = vec![0u64; groups];
    for (group, size) in held {
        if let Some(total) = bytes.get_mut(group) {
            *total = total.saturating_add(size.max(1));
        }
    }
    let (group, &most) = bytes
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|&(_, total)| *total)?;
    (most > 0).then_some(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_group_with_most_input_bytes_wins() {
        assert_eq!(
            most_input_bytes(3, [(0, 10), (1, 100), (0, 50), (2, 1)]),
            Some(1)
        );
        assert_eq!(most_input_bytes(3, [(0, 60), (1, 100), (0, 50)]), Some(0));
    }

    #[test]
    fn empty_inputs_still_attract_their_consumer() {
        assert_eq!(most_input_bytes(2, [(1, 0)]), Some(1));
        assert_eq!(most_input_bytes(2, [(0, 0), (1, 0), (1, 0)]), Some(1));
    }

    #[test]
    fn nothing_held_leaves_the_task_unplaced() {
        assert_eq!(most_input_bytes(4, []), None);
        assert_eq!(
            most_input_bytes(2, [(5, 100)]),
            None,
            "a group that no longer exists"
        );
    }

    proptest! {
        #[test]
        fn no_group_holds_more_than_the_chosen_one(
            held in proptest::collection::vec((0usize..4, 0u64..1000), 0..20),
        ) {
            let chosen = most_input_bytes(4, held.iter().copied());
            let total = |g: usize| held.iter().filter(|(h, _)| *h == g).map(|(_, b)| b.max(&1)).sum::<u64>();
            match chosen {
                None => prop_assert!(held.is_empty()),
                Some(g) => {
                    for other in 0..4 {
                        prop_assert!(total(other) < total(g) || (total(other) == total(g) && other >= g));
                    }
                }
            }
        }
    }
}
