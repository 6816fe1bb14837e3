//! The reference architectures of the DP literature, ready to train.

use crate::error::{CoreError, Result};
use crate::init::Init;
use crate::layers::{
    AvgPool2d, ChannelsLast, Conv2d, Conv2dConfig, Flatten, GlobalAvgPool, GroupNorm, Linear,
    MaxPool2d, Relu, Reshape, Tanh,
};
use crate::model::Sequential;
use candle_core::Device;

/// A ReLU multi-layer perceptron with layer widths `dims` (e.g. `[784, 256, 256, 10]`).
/// Inputs of any shape with `dims[0]` values per example are flattened first.
///
/// ```
/// use dp_core::{models, Model};
/// let m = models::mlp(&[784, 256, 256, 10], &candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
/// ```
pub fn mlp(dims: &[usize], device: &Device, seed: u64) -> Result<Sequential> {
    if dims.len() < 2 {
        return Err(CoreError::InvalidArgument(
            "an MLP needs at least two widths".into(),
        ));
    }
    let mut init = Init::seeded(seed);
    let mut m = Sequential::new(device).push(Reshape::new(&[dims[0]]));
    for (k, w) in dims.windows(2).enumerate() {
        m = m.push(Linear::new(w[0], w[1], true, &mut init, device)?);
        if k + 2 < dims.len() {
            m = m.push(Relu::default());
        }
    }
    Ok(m)
}

/// The end-to-end tanh CNN of the DP literature for 28×28 grey images (Papernot et al.
/// 2021; Tramèr & Boneh 2021, Table 9; Opacus's MNIST example):
/// Conv(1→16, 8×8, stride 2, pad 3) – tanh – MaxPool(2, stride 1) – Conv(16→32, 4×4,
/// stride 2) – tanh – MaxPool(2, stride 1) – Linear(512→32) – tanh – Linear(32→10);
/// 26,010 parameters. Inputs `[B, 784]`, `[B, 1, 28, 28]` or `[B, 28, 28, 1]`.
///
/// ```
/// use dp_core::{models, Model};
/// let m = models::mnist_cnn(&candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 26_010);
/// ```
pub fn mnist_cnn(device: &Device, seed: u64) -> Result<Sequential> {
    let mut init = Init::seeded(seed);
    Ok(Sequential::new(device)
        .push(Reshape::new(&[28, 28, 1]))
        .push(Conv2d::new(
            Conv2dConfig::new(1, 16, 8).stride(2).padding(3),
            &mut init,
            device,
        )?)
        .push(Tanh::default())
        .push(MaxPool2d::new(2, 1))
        .push(Conv2d::new(
            Conv2dConfig::new(16, 32, 4).stride(2),
            &mut init,
            device,
        )?)
        .push(Tanh::default())
        .push(MaxPool2d::new(2, 1))
        .push(Flatten::default())
        .push(Linear::new(512, 32, true, &mut init, device)?)
        .push(Tanh::default())
        .push(Linear::new(32, 10, true, &mut init, device)?))
}

/// The CNN of Esipova et al. 2023's imbalanced-MNIST experiment (official code
/// `layer6ai-labs/fair-dp`, `net=cnn`, `hidden_channels=32,16`): Conv(1→32, 3×3) – tanh –
/// Conv(32→16, 3×3) – tanh – Linear(16·24·24 → 10), no padding and no pooling; 97,114
/// parameters. Inputs `[B, 784]`, `[B, 1, 28, 28]` or `[B, 28, 28, 1]`.
///
/// ```
/// use dp_core::{models, Model};
/// let m = models::esipova_cnn(&candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 97_114);
/// ```
pub fn esipova_cnn(device: &Device, seed: u64) -> Result<Sequential> {
    let mut init = Init::seeded(seed);
    Ok(Sequential::new(device)
        .push(Reshape::new(&[28, 28, 1]))
        .push(Conv2d::new(Conv2dConfig::new(1, 32, 3), &mut init, device)?)
        .push(Tanh::default())
        .push(Conv2d::new(
            Conv2dConfig::new(32, 16, 3),
            &mut init,
            device,
        )?)
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(16 * 24 * 24, 10, true, &mut init, device)?))
}

/// The small CIFAR-10 convnet of Opacus's examples: four 3×3 convs (32, 64, 64, 128
/// channels, pad 1) with ReLU and 2×2 average pooling after the first three, global
/// average pooling, Linear(128→10). With `group_norm`, a GroupNorm (8 groups) follows each
/// conv. Inputs `[B, 3, 32, 32]` (PyTorch layout, converted to channels-last inside).
///
/// ```
/// use dp_core::{models, Model};
/// let m = models::cifar_cnn(&candle_core::Device::Cpu, 0, false).unwrap();
/// assert_eq!(m.num_params(), 896 + 18_496 + 36_928 + 73_856 + 1_290);
/// ```
pub fn cifar_cnn(device: &Device, seed: u64, group_norm: bool) -> Result<Sequential> {
    let mut init = Init::seeded(seed);
    let mut m = Sequential::new(device).push(ChannelsLast);
    let chans = [(3, 32), (32, 64), (64, 64), (64, 128)];
    for (k, &(cin, cout)) in chans.iter().enumerate() {
        m = m.push(Conv2d::new(
            Conv2dConfig::new(cin, cout, 3).padding(1),
            &mut init,
            device,
        )?);
        if group_norm {
            m = m.push(GroupNorm::new(8, cout, device)?);
        }
        m = m.push(Relu::default());
        if k < 3 {
            m = m.push(AvgPool2d::new(2, 2));
        }
    }
    Ok(m.push(GlobalAvgPool::default())
        .push(Linear::new(128, 10, true, &mut init, device)?))
}

/// Tramèr & Boneh (2021)'s ScatterNet + linear model: a linear classifier over the
/// scattering features of an image (`[B, channels, h, w]`, e.g. 81×7×7 for a 28×28 digit
/// with J = 2; official code `ScatterLinear`). The features' GroupNorm is applied to the
/// data beforehand (`dp_data::GroupNormalize`, per example, no privacy cost), as their
/// `affine=False` GroupNorm has no parameters.
///
/// ```
/// use dp_core::{models, Model};
/// let m = models::scatter_linear(81, 7, 7, 10, &candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 81 * 49 * 10 + 10);
/// ```
pub fn scatter_linear(
    channels: usize,
    h: usize,
    w: usize,
    classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Sequential> {
    let d = channels * h * w;
    if d == 0 || classes == 0 {
        return Err(CoreError::InvalidArgument(format!(
            "scatter_linear needs non-empty features and classes, got {channels}×{h}×{w} → {classes}"
        )));
    }
    let mut init = Init::seeded(seed);
    Ok(Sequential::new(device)
        .push(Reshape::new(&[d]))
        .push(Linear::new(d, classes, true, &mut init, device)?))
}

/// Tramèr & Boneh (2021)'s ScatterNet + CNN for MNIST-sized inputs (official code
/// `MNIST_CNN` with `in_channels = 81`): Conv(channels→16, 3×3, stride 2, pad 1) – tanh –
/// Conv(16→32, 3×3, pad 1) – tanh – Linear(32·h'·w' → 32) – tanh – Linear(32→10), with
/// `h' = ⌈h/2⌉` (4×4 for 7×7 features); 33,066 parameters over 81×7×7. Inputs
/// `[B, channels, h, w]` (channel first, as dp-data's scattering features), converted to
/// channels-last inside.
///
/// ```
/// use dp_core::{models, Model};
/// let mut m = models::scatter_cnn(81, 7, 7, &candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 33_066);
/// let x = candle_core::Tensor::zeros((2, 81, 7, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(m.forward(&x, false).unwrap().dims(), &[2, 10]);
/// ```
pub fn scatter_cnn(
    channels: usize,
    h: usize,
    w: usize,
    device: &Device,
    seed: u64,
) -> Result<Sequential> {
    if channels == 0 || h == 0 || w == 0 {
        return Err(CoreError::InvalidArgument(format!(
            "scatter_cnn needs non-empty features, got {channels}×{h}×{w}"
        )));
    }
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let mut init = Init::seeded(seed);
    Ok(Sequential::new(device)
        .push(ChannelsLast)
        .push(Conv2d::new(
            Conv2dConfig::new(channels, 16, 3).stride(2).padding(1),
            &mut init,
            device,
        )?)
        .push(Tanh::default())
        .push(Conv2d::new(
            Conv2dConfig::new(16, 32, 3).padding(1),
            &mut init,
            device,
        )?)
        .push(Tanh::default())
        .push(Flatten::default())
        .push(Linear::new(32 * h2 * w2, 32, true, &mut init, device)?)
        .push(Tanh::default())
        .push(Linear::new(32, 10, true, &mut init, device)?))
}

/// The model family of Xiao et al. (S&P 2023)'s official code (`datasets/RESNETS.py`, a
/// CIFAR ResNet with weight-standardised convolutions and non-affine GroupNorm) scaled to
/// 28×28 grey images: a stem WS-Conv(1→w, 3×3) – GroupNorm – tanh, then three stages of
/// `blocks[s]` basic blocks with `w`, `2w`, `4w` channels (the first block of stages 2 and
/// 3 at stride 2, 28 → 14 → 7), each block
/// `relu(GN(conv(relu(GN(conv(x))))) + shortcut(x))` with the parameter-free option-A
/// shortcut, then global average pooling and Linear(4w → 10). Convolutions have no bias;
/// every GroupNorm has `min(4, C)` groups and no gain or bias. With `ws = false` the
/// convolutions are plain (the stored version of the official code has standardisation
/// commented out). Ours: the width, the block counts and the global pooling (the official
/// code pools to 2×2 for 32×32 inputs). Inputs `[B, 784]`, `[B, 1, 28, 28]` or
/// `[B, 28, 28, 1]`.
///
/// ```
/// use dp_core::{models, Model};
/// let mut m = models::ws_gn_resnet(8, &[1, 1, 1], true, &candle_core::Device::Cpu, 0).unwrap();
/// assert_eq!(m.num_params(), 72 + 1_152 + 3_456 + 13_824 + 330);
/// assert_eq!(m.num_blocks(), 3);
/// let x = candle_core::Tensor::zeros((2, 784), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(m.forward(&x, false).unwrap().dims(), &[2, 10]);
/// ```
pub fn ws_gn_resnet(
    width: usize,
    blocks: &[usize],
    ws: bool,
    device: &Device,
    seed: u64,
) -> Result<crate::Residual> {
    use crate::layers::{NonAffineGroupNorm, WsConv2d};
    use crate::{Layer, Residual, Shortcut};
    if width == 0 || blocks.len() != 3 || blocks.contains(&0) {
        return Err(CoreError::InvalidArgument(format!(
            "ws_gn_resnet needs a width ≥ 1 and three stages of ≥ 1 block, got {width}, {blocks:?}"
        )));
    }
    let mut init = Init::seeded(seed);
    let conv =
        |cin: usize, cout: usize, stride: usize, init: &mut Init| -> Result<Box<dyn Layer>> {
            let cfg = Conv2dConfig::new(cin, cout, 3)
                .stride(stride)
                .padding(1)
                .bias(false);
            Ok(if ws {
                Box::new(WsConv2d::new(cfg, init, device)?)
            } else {
                Box::new(Conv2d::new(cfg, init, device)?)
            })
        };
    let gn = |c: usize| NonAffineGroupNorm::new(c.min(4), c);
    let mut net = Residual::new(device).push(Reshape::new(&[28, 28, 1]));
    net = net.push_boxed(conv(1, width, 1, &mut init)?);
    net = net.push(gn(width)?).push(Tanh::default());
    let mut cin = width;
    for (s, &n) in blocks.iter().enumerate() {
        let planes = width << s;
        for b in 0..n {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let mut body = Sequential::new(device);
            body.add(conv(cin, planes, stride, &mut init)?);
            body.add(Box::new(gn(planes)?));
            body.add(Box::new(Relu::default()));
            body.add(conv(planes, planes, 1, &mut init)?);
            body.add(Box::new(gn(planes)?));
            let shortcut = if stride == 1 && cin == planes {
                Shortcut::Identity
            } else {
                Shortcut::subsample_pad(stride, cin, planes)?
            };
            net = net.push_block(body, shortcut).push(Relu::default());
            cin = planes;
        }
    }
    Ok(net
        .push(GlobalAvgPool::default())
        .push(Linear::new(cin, 10, true, &mut init, device)?))
}
