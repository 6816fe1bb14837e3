//! The trainer's loop hooks: a learning-rate schedule applied before every step (equal to a
//! caller setting the same rates by hand), an epoch callback that sees the trainer and can
//! stop the run, and checkpoints every k steps that a resumed run continues from.

use candle_core::Device;
use dp_optim::{
    checkpoint_step, BatchSize, Delta, EpochRecord, Epochs, FixedClip, LrSchedule, PrivateTrainer,
    Sgd, StopReason, TrainHooks, TrainerConfig,
};
use std::ops::ControlFlow;

fn trainer(schedule: LrSchedule, epochs: f64) -> PrivateTrainer<dp_core::Sequential> {
    let data = dp_data::load_bundled_mnist().unwrap();
    let model = dp_core::models::mlp(&[784, 8, 10], &Device::Cpu, 3).unwrap();
    let cfg = TrainerConfig::new(Epochs(epochs), BatchSize(400.0), Delta(1e-5))
        .with_seed(7)
        .with_lr_schedule(schedule);
    PrivateTrainer::new(
        model,
        Box::new(Sgd::new(0.2).with_momentum(0.5)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        cfg,
        &data.train,
    )
    .unwrap()
}

fn params(t: &PrivateTrainer<dp_core::Sequential>) -> Vec<Vec<f32>> {
    use dp_core::Model;
    t.model()
        .param_tensors()
        .iter()
        .map(|p| p.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn a_schedule_equals_the_same_rates_set_by_hand() {
    let data = dp_data::load_bundled_mnist().unwrap();
    let schedule = LrSchedule::WarmUp {
        steps: 5,
        then: Box::new(LrSchedule::Cosine { floor: 0.1 }),
    };
    let mut scheduled = trainer(schedule.clone(), 3.0);
    let mut rates = Vec::new();
    let mut on_epoch = |t: &mut PrivateTrainer<_>, _: &EpochRecord| {
        rates.push(t.optimizer().learning_rate());
        Ok(ControlFlow::Continue(()))
    };
    let mut hooks = TrainHooks::new().on_epoch(&mut on_epoch);
    scheduled
        .train_with(&data.train, None, &Device::Cpu, &mut hooks)
        .unwrap();
    drop(hooks);
    let mut by_hand = trainer(LrSchedule::Constant, 3.0);
    let (per_epoch, total) = (by_hand.steps_per_epoch(), by_hand.total_steps());
    assert_eq!((per_epoch, total), (10, 30));
    for step in 0..total {
        let lr = 0.2 * schedule.factor(step, per_epoch, total);
        by_hand.optimizer_mut().set_learning_rate(lr);
        by_hand.step(&data.train, &Device::Cpu).unwrap().unwrap();
    }
    assert_eq!(params(&scheduled), params(&by_hand));
    // The rate of each epoch's last step: warm-up over, then cosine to 0.1 × 0.2.
    assert_eq!(rates.len(), 3);
    for (e, r) in rates.iter().enumerate() {
        let want = 0.2 * schedule.factor(10 * e as u64 + 9, 10, 30);
        assert!((r - want).abs() < 1e-12, "epoch {e}: {r} vs {want}");
    }
    assert!((rates[2] - 0.02).abs() < 1e-12);
    // A constant schedule leaves a rate the caller set alone.
    let mut t = trainer(LrSchedule::Constant, 0.2);
    t.optimizer_mut().set_learning_rate(0.05);
    t.train(&data.train, None).unwrap();
    assert_eq!(t.optimizer().learning_rate(), 0.05);
    assert!(LrSchedule::Step {
        every_epochs: 1,
        factor: 0.0
    }
    .validate()
    .is_err());
}

#[test]
fn the_epoch_callback_can_stop_the_run_and_checkpoints_come_every_k_steps() {
    let data = dp_data::load_bundled_mnist().unwrap();
    let dir = std::env::temp_dir().join(format!("dp-optim-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = trainer(
        LrSchedule::Step {
            every_epochs: 1,
            factor: 0.5,
        },
        4.0,
    );
    let mut seen_steps = 0;
    let mut on_step = |_: &dp_optim::StepRecord| seen_steps += 1;
    let mut saved_at = Vec::new();
    let ck = dir.clone();
    let mut on_epoch = |t: &mut PrivateTrainer<_>, e: &EpochRecord| {
        // The latest checkpoint is the last multiple of 3 steps.
        saved_at.push((t.steps_taken(), checkpoint_step(&ck).unwrap()));
        Ok(if e.epoch == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    };
    let mut hooks = TrainHooks::new()
        .on_step(&mut on_step)
        .on_epoch(&mut on_epoch)
        .checkpoint_every(3, &dir);
    let r = t
        .train_with(&data.train, Some(&data.test), &Device::Cpu, &mut hooks)
        .unwrap();
    drop(hooks);
    assert_eq!(r.stop, StopReason::StoppedByCallback { epoch: 2 });
    assert_eq!(r.steps, 20);
    assert_eq!(seen_steps, 20);
    assert_eq!(saved_at, vec![(10, 9), (20, 18)]);
    // Stopping writes a final checkpoint, from which the run resumes and finishes like one
    // that never stopped.
    assert_eq!(checkpoint_step(&dir).unwrap(), 20);
    let fresh = trainer(
        LrSchedule::Step {
            every_epochs: 1,
            factor: 0.5,
        },
        4.0,
    );
    let model = dp_core::models::mlp(&[784, 8, 10], &Device::Cpu, 3).unwrap();
    let mut resumed = PrivateTrainer::resume(
        &dir,
        model,
        Box::new(Sgd::new(0.2).with_momentum(0.5)),
        Box::new(FixedClip::new(1.0, 1.0).unwrap()),
        &data.train,
        &Device::Cpu,
    )
    .unwrap();
    resumed.train(&data.train, None).unwrap();
    let mut straight = fresh;
    straight.train(&data.train, None).unwrap();
    assert_eq!(resumed.steps_taken(), 40);
    assert_eq!(params(&resumed), params(&straight));
    let mut bad = TrainHooks::new().checkpoint_every(0, &dir);
    assert!(trainer(LrSchedule::Constant, 1.0)
        .train_with(&data.train, None, &Device::Cpu, &mut bad)
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
