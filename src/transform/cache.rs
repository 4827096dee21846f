//! A transform's plans by signature, bounded: when it holds more plans than its capacity, the
//! least recently used one is dropped (and built again if it is needed again).

use std::collections::HashMap;
use std::sync::Arc;

use super::compile::Compiled;
use super::function::Signature;

/// Plans kept per transform unless [`GradientTransform::cache_size`] says otherwise.
///
/// [`GradientTransform::cache_size`]: super::GradientTransform::cache_size
pub(crate) const DEFAULT_CAPACITY: usize = 64;

/// Plans by argument signature; each also checks the states it read (see
/// [`Compiled::fits_states`]), so one signature may hold several.
pub(crate) struct PlanCache {
    capacity: usize,
    /// Uses so far: a plan's stamp is the count at its last use.
    clock: u64,
    plans: HashMap<Signature, Vec<(Arc<Compiled>, u64)>>,
}

impl PlanCache {
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            capacity: capacity.max(1),
            clock: 0,
            plans: HashMap::new(),
        }
    }

    /// The most plans it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of plans held.
    pub fn len(&self) -> usize {
        self.plans.values().map(Vec::len).sum()
    }

    /// Sets the capacity, dropping the least recently used plans beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict();
    }

    /// The plan for `signature` that fits the states' current values, marked as used. Plans
    /// that can never fit again (a state they baked in has changed) are dropped.
    pub fn get(&mut self, signature: &Signature) -> Option<Arc<Compiled>> {
        self.clock += 1;
        let clock = self.clock;
        let plans = self.plans.get_mut(signature)?;
        plans.retain(|(plan, _)| !plan.is_stale());
        let found = plans.iter_mut().find(|(plan, _)| plan.fits_states());
        let found = found.map(|(plan, stamp)| {
            *stamp = clock;
            plan.clone()
        });
        if plans.is_empty() {
            self.plans.remove(signature);
        }
        found
    }

    /// Keeps `plan` for `signature`, dropping the least recently used plans beyond the
    /// capacity.
    pub fn insert(&mut self, signature: &Signature, plan: Arc<Compiled>) {
        self.clock += 1;
        self.plans
            .entry(signature.clone())
            .or_default()
            .push((plan, self.clock));
        self.evict();
    }

    fn evict(&mut self) {
        while self.len() > self.capacity {
            let oldest = self
                .plans
                .iter()
                .flat_map(|(sig, plans)| plans.iter().enumerate().map(move |(k, p)| (p.1, sig, k)))
                .min_by_key(|(stamp, ..)| *stamp)
                .map(|(_, sig, k)| (sig.clone(), k));
            let Some((signature, k)) = oldest else {
                return;
            };
            if let Some(plans) = self.plans.get_mut(&signature) {
                plans.remove(k);
                if plans.is_empty() {
                    self.plans.remove(&signature);
                }
            }
        }
    }
}
