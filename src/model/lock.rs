//! Locking towers for fine-tuning (LiT, Zhai et al. 2022; open_clip's `--lock-image`,
//! `--lock-text`): a locked weight gets `requires_grad = false` (`Param::set_requires_grad`), so
//! it enters every graph as a constant — backward computes nothing for it or for anything that
//! depends only on locked weights (a wholly locked image tower costs a forward and no backward) —
//! and the optimizer built afterwards keeps no state for it.
//!
//! A tower is split into groups, in forward order; the last `unlocked` groups stay trainable.
//! The groups are open_clip 3.3's:
//!
//! ```text
//! ViT image tower   [conv1, class_embedding, positional_embedding, ln_pre], block 0, …,
//!                   block L−2, [block L−1, ln_post], proj
//! text tower        [token_embedding, positional_embedding], block 0, …, block L−2,
//!                   [block L−1, ln_final], text_projection
//! ModifiedResNet    [stem convs and BNs], layer1, layer2, layer3, layer4, attnpool
//! ```
//!
//! so `unlocked = 1` trains only the projection of a transformer tower and `unlocked = 2` the
//! last block with its final LayerNorm too. open_clip refuses partial locking of a
//! ModifiedResNet; here its groups are its stages, the attention pool (which holds the
//! projection) last. `freeze_bn_stats` makes the BatchNorms of the locked groups use their
//! running statistics, in training too, and stop updating them (timm's `freeze_batch_norm_2d`);
//! without it a locked ResNet's BatchNorms still normalise with batch statistics and update their
//! running ones, as PyTorch's do in `train()` mode. `logit_scale` belongs to neither tower.

use super::clip::{Clip, VisionTower};
use super::resnet::ModifiedResNet;
use crate::nn::{Module, Transformer};
use crate::{Error, Param, Result};

/// What a fine-tune locks (`clipcu train --lock-image …`); the default locks nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Locking {
    /// Lock the image tower (`--lock-image`).
    pub image: bool,
    /// Groups at the end of the image tower left trainable (`--lock-image-unlocked-groups`).
    pub image_unlocked_groups: usize,
    /// Locked ResNet groups' BatchNorms use running statistics (`--lock-image-freeze-bn-stats`).
    pub image_freeze_bn_stats: bool,
    /// Lock the text tower (`--lock-text`).
    pub text: bool,
    /// Groups at the end of the text tower left trainable (`--lock-text-unlocked-layers`).
    pub text_unlocked_layers: usize,
}

impl Locking {
    /// Refuses options that only make sense with a lock (the CLI names are used).
    pub fn validate(&self) -> Result<()> {
        let needs = |set: bool, flag: &str, lock: &str| {
            if set {
                Err(Error::Msg(format!(
                    "{flag} refines {lock}, which is not given: add {lock}"
                )))
            } else {
                Ok(())
            }
        };
        needs(
            !self.image && self.image_unlocked_groups > 0,
            "--lock-image-unlocked-groups",
            "--lock-image",
        )?;
        needs(
            !self.image && self.image_freeze_bn_stats,
            "--lock-image-freeze-bn-stats",
            "--lock-image",
        )?;
        needs(
            !self.text && self.text_unlocked_layers > 0,
            "--lock-text-unlocked-layers",
            "--lock-text",
        )
    }

    /// Lock `model` as this says. Call it before the optimizer is made.
    pub fn apply(&self, model: &mut Clip) -> Result<()> {
        self.validate()?;
        if self.image {
            lock_image_tower(
                model,
                self.image_unlocked_groups,
                self.image_freeze_bn_stats,
            )?;
        }
        if self.text {
            lock_text_tower(model, self.text_unlocked_layers)?;
        }
        Ok(())
    }
}

fn params_of(m: &dyn Module) -> Vec<Param> {
    m.parameters()
}

/// Every block of a transformer as one group, except the last, which joins `last_with`.
fn block_groups(t: &Transformer, last_with: Vec<Param>) -> Vec<Vec<Param>> {
    let n = t.resblocks.len();
    let mut groups: Vec<Vec<Param>> = t.resblocks[..n.saturating_sub(1)]
        .iter()
        .map(|b| params_of(b))
        .collect();
    let mut last = t.resblocks.last().map(|b| params_of(b)).unwrap_or_default();
    last.extend(last_with);
    groups.push(last);
    groups
}

/// Locks every group but the last `unlocked`; returns the indices of the locked ones.
fn lock_groups(groups: &[Vec<Param>], unlocked: usize, flag: &str) -> Result<usize> {
    if unlocked > groups.len() {
        return Err(Error::Msg(format!(
            "{flag} {unlocked}: the tower has {} groups (open_clip's: see clipcu::model::lock), \
             so at most {} can stay unlocked",
            groups.len(),
            groups.len()
        )));
    }
    let locked = groups.len() - unlocked;
    for p in groups[..locked].iter().flatten() {
        p.set_requires_grad(false);
    }
    Ok(locked)
}

/// Lock the image tower but its last `unlocked_groups` groups (see the module doc).
pub fn lock_image_tower(
    model: &mut Clip,
    unlocked_groups: usize,
    freeze_bn_stats: bool,
) -> Result<()> {
    const FLAG: &str = "--lock-image-unlocked-groups";
    match &mut model.visual {
        VisionTower::Vit(v) => {
            let mut stem = params_of(&v.conv1);
            stem.extend([v.class_embedding.clone(), v.positional_embedding.clone()]);
            stem.extend(params_of(&v.ln_pre));
            let mut groups = vec![stem];
            groups.extend(block_groups(&v.transformer, params_of(&v.ln_post)));
            groups.push(vec![v.proj.clone()]);
            lock_groups(&groups, unlocked_groups, FLAG)?;
        }
        VisionTower::ResNet(r) => {
            let groups = resnet_groups(r);
            let locked = lock_groups(&groups, unlocked_groups, FLAG)?;
            if freeze_bn_stats {
                r.freeze_bn_stats(locked);
            }
        }
    }
    Ok(())
}

/// [stem], layer1 … layer4, [attnpool] (the order of `ModifiedResNet::freeze_bn_stats`).
fn resnet_groups(r: &ModifiedResNet) -> Vec<Vec<Param>> {
    let mut stem = Vec::new();
    for c in &r.stem {
        stem.extend(params_of(&c.conv));
        stem.extend(params_of(&c.bn));
    }
    let mut groups = vec![stem];
    for layer in &r.layers {
        let mut g = Vec::new();
        for b in layer {
            b.visit(&mut |p| g.push(p.clone()));
        }
        groups.push(g);
    }
    let mut pool = Vec::new();
    r.attnpool.visit(&mut |p| pool.push(p.clone()));
    groups.push(pool);
    groups
}

/// Lock the text tower but its last `unlocked_layers` groups (see the module doc).
pub fn lock_text_tower(model: &mut Clip, unlocked_layers: usize) -> Result<()> {
    let t = &model.text;
    let mut groups = vec![vec![
        t.token_embedding.clone(),
        t.positional_embedding.clone(),
    ]];
    groups.extend(block_groups(&t.transformer, params_of(&t.ln_final)));
    groups.push(vec![t.text_projection.clone()]);
    lock_groups(&groups, unlocked_layers, "--lock-text-unlocked-layers")?;
    Ok(())
}
