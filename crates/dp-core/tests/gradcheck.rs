//! Every layer's hand-written backward against central finite differences (f64).
//! Tolerance: relative error ≤ 1e-5 (or absolute ≤ 1e-9) per probed coordinate.

mod common;
use candle_core::{DType, Device};
use common::*;
use dp_core::layers::*;
use dp_core::{CrossEntropy, HalfSquaredError, Init, Sequential};

const TOL: f64 = 1e-5;

fn check(mut m: Sequential, x_shape: &[usize], classes: usize, seed: u64) {
    to_f64(&mut m);
    let mut r = rng(seed);
    let x = randn(&mut r, x_shape, DType::F64);
    let y = labels(&mut r, x_shape[0], classes);
    let worst = gradcheck(&mut m, &x, &y, &CrossEntropy, 40, seed);
    assert!(worst < TOL, "worst relative error {worst}");
}

#[test]
fn linear_with_and_without_bias() {
    let d = Device::Cpu;
    let mut i = Init::seeded(1);
    let m = Sequential::new(&d)
        .push(Linear::new(5, 7, true, &mut i, &d).unwrap())
        .push(Tanh::default())
        .push(Linear::new(7, 3, false, &mut i, &d).unwrap());
    check(m, &[6, 5], 3, 1);
}

#[test]
fn linear_on_sequences_then_layer_norm() {
    let d = Device::Cpu;
    let mut i = Init::seeded(2);
    let m = Sequential::new(&d)
        .push(Linear::new(4, 6, true, &mut i, &d).unwrap())
        .push(LayerNorm::new(6, &d).unwrap())
        .push(Sigmoid::default())
        .push(Flatten::default())
        .push(Linear::new(18, 3, true, &mut i, &d).unwrap());
    check(m, &[5, 3, 4], 3, 2);
}

#[test]
fn conv_stride_padding_dilation_groups_with_group_norm_and_pools() {
    let d = Device::Cpu;
    let mut i = Init::seeded(3);
    let m = Sequential::new(&d)
        .push(ChannelsLast)
        .push(
            Conv2d::new(
                Conv2dConfig::new(4, 6, 3)
                    .stride(2)
                    .padding(1)
                    .dilation(1)
                    .groups(2),
                &mut i,
                &d,
            )
            .unwrap(),
        )
        .push(GroupNorm::new(3, 6, &d).unwrap())
        .push(Relu::default())
        .push(
            Conv2d::new(
                Conv2dConfig::new(6, 4, 2).dilation(2).padding(1),
                &mut i,
                &d,
            )
            .unwrap(),
        )
        .push(MaxPool2d::new(2, 1))
        .push(Tanh::default())
        .push(AvgPool2d::new(2, 2))
        .push(GlobalAvgPool::default())
        .push(Linear::new(4, 3, true, &mut i, &d).unwrap());
    check(m, &[3, 4, 9, 9], 3, 3);
}

#[test]
fn mnist_cnn_architecture() {
    let m = dp_core::models::mnist_cnn(&Device::Cpu, 4).unwrap();
    check(m, &[2, 784], 10, 4);
}

#[test]
fn embedding_then_linear_with_half_squared_error() {
    let d = Device::Cpu;
    let mut i = Init::seeded(5);
    let mut m = Sequential::new(&d)
        .push(Embedding::new(11, 4, &mut i, &d).unwrap())
        .push(Flatten::default())
        .push(Linear::new(12, 2, true, &mut i, &d).unwrap());
    to_f64(&mut m);
    let ids = candle_core::Tensor::new(&[[1u32, 2, 1], [3, 10, 0], [5, 5, 5]], &d).unwrap();
    let mut r = rng(5);
    let y = randn(&mut r, &[3, 2], DType::F64);
    let worst = gradcheck(&mut m, &ids, &y, &HalfSquaredError, 40, 5);
    assert!(worst < TOL, "worst relative error {worst}");
}

#[test]
fn max_pool_gradient_is_one_at_the_max_not_a_quarter() {
    // candle's max_pool2d backward gives 0.25 here (candle-notes.md).
    use candle_core::Tensor;
    use dp_core::Layer;
    let mut p = MaxPool2d::new(2, 2);
    let x = Tensor::new(&[1f32, 5., 2., 3.], &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 1))
        .unwrap();
    p.forward(&x, true).unwrap();
    let g = Tensor::ones((1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let dx = p.backward(&g, true).unwrap().unwrap();
    assert_eq!(
        dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0., 1., 0., 0.]
    );
}
