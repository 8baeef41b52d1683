//! (placeholder while the op is written)

use crate::{Error, Result, Tensor};

pub struct Conv2dOp {}

impl Conv2dOp {
    pub(crate) fn backward(
        &self,
        _saved: &[Tensor],
        _gout: &Tensor,
        _needs: &[bool],
    ) -> Result<Vec<Option<Tensor>>> {
        Err(Error::Msg("conv2d: backward not written yet".into()))
    }
}
