//! The in-memory dataset type: contiguous `f32` features, `u32` labels, optional groups.
//!
//! Examples are stored back to back in one `Vec<f32>` (row-major, example `i` occupies
//! `features[i * example_len .. (i + 1) * example_len]`) so the trainer can turn a gathered
//! batch into a tensor with a single copy and no framework dependency here.

use crate::error::DataError;

/// A labelled dataset held in memory as one contiguous `f32` buffer.
///
/// Optional *group* labels (one `u32` per example) support disparate-impact studies, where
/// accuracy and clipping statistics are reported per group (e.g. group = class, or a
/// protected attribute from a tabular dataset).
///
/// ```
/// use dp_data::Dataset;
/// let ds = Dataset::new("toy", vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], vec![0, 1, 1], vec![2], 2)?;
/// assert_eq!(ds.len(), 3);
/// let batch = ds.gather(&[2, 0]);
/// assert_eq!(batch.features, vec![4.0, 5.0, 0.0, 1.0]);
/// assert_eq!(batch.labels, vec![1, 0]);
/// # Ok::<(), dp_data::DataError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Vec<f32>,
    labels: Vec<u32>,
    groups: Option<Vec<u32>>,
    example_shape: Vec<usize>,
    num_classes: usize,
    name: String,
}

/// A gathered (logical or physical) batch: copies of the selected examples.
///
/// `features` has `indices.len() * example_len` values; example `j` of the batch is
/// dataset example `indices[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Contiguous features, `[len, example_shape...]` row-major.
    pub features: Vec<f32>,
    /// Labels, one per row.
    pub labels: Vec<u32>,
    /// Group labels, one per row, when the dataset has groups.
    pub groups: Option<Vec<u32>>,
    /// Dataset indices of the rows.
    pub indices: Vec<usize>,
    /// Shape of one example, e.g. `[1, 28, 28]`.
    pub example_shape: Vec<usize>,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no rows (Poisson batches may be empty).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of `f32` values per row.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Full tensor shape `[len, example_shape...]`, convenient for building a tensor.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = Vec::with_capacity(self.example_shape.len() + 1);
        s.push(self.len());
        s.extend_from_slice(&self.example_shape);
        s
    }
}

/// A training split and a test split of the same dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTest {
    /// Training split.
    pub train: Dataset,
    /// Held-out test split.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a dataset, checking that the buffer lengths agree with the shape and that
    /// every label is below `num_classes`.
    ///
    /// ```
    /// let ds = dp_data::Dataset::new("x", vec![0.5; 8], vec![0, 1], vec![1, 2, 2], 2)?;
    /// assert_eq!(ds.example_len(), 4);
    /// # Ok::<(), dp_data::DataError>(())
    /// ```
    pub fn new(
        name: impl Into<String>,
        features: Vec<f32>,
        labels: Vec<u32>,
        example_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let example_len: usize = example_shape.iter().product();
        if example_len == 0 {
            return Err(DataError::InvalidArgument(format!(
                "example shape {example_shape:?} has no elements"
            )));
        }
        if features.len() != labels.len() * example_len {
            return Err(DataError::InvalidArgument(format!(
                "{} feature values for {} examples of shape {example_shape:?} (expected {})",
                features.len(),
                labels.len(),
                labels.len() * example_len
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::InvalidArgument(format!(
                "label {l} of example {i} is outside 0..{num_classes}"
            )));
        }
        Ok(Dataset {
            features,
            labels,
            groups: None,
            example_shape,
            num_classes,
            name: name.into(),
        })
    }

    /// Attaches user-supplied group labels (one per example).
    ///
    /// ```
    /// let ds = dp_data::Dataset::new("x", vec![0.0; 3], vec![0, 1, 0], vec![1], 2)?
    ///     .with_groups(vec![7, 7, 3])?;
    /// assert_eq!(ds.groups(), Some(&[7, 7, 3][..]));
    /// # Ok::<(), dp_data::DataError>(())
    /// ```
    pub fn with_groups(mut self, groups: Vec<u32>) -> Result<Self, DataError> {
        if groups.len() != self.labels.len() {
            return Err(DataError::InvalidArgument(format!(
                "{} group labels for {} examples",
                groups.len(),
                self.labels.len()
            )));
        }
        self.groups = Some(groups);
        Ok(self)
    }

    /// Uses the class label as the group label (the usual choice for per-class
    /// disparate-impact studies, e.g. Bagdasaryan et al. 2019).
    pub fn with_class_groups(mut self) -> Self {
        self.groups = Some(self.labels.clone());
        self
    }

    /// Removes group labels.
    pub fn without_groups(mut self) -> Self {
        self.groups = None;
        self
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of one example, e.g. `[1, 28, 28]` (channels first) or `[d]` for tabular data.
    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    /// Number of `f32` values per example.
    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Number of classes (labels lie in `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Human-readable dataset name, e.g. `"mnist/train"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the dataset.
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// All features, contiguous.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Mutable access to the features, for in-place transforms such as [`crate::Normalize`].
    pub fn features_mut(&mut self) -> &mut [f32] {
        &mut self.features
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Group labels, if any.
    pub fn groups(&self) -> Option<&[u32]> {
        self.groups.as_deref()
    }

    /// Features of example `i`, or `None` when out of range.
    pub fn example(&self, i: usize) -> Option<&[f32]> {
        let d = self.example_len();
        self.features
            .get(i.checked_mul(d)?..(i + 1).checked_mul(d)?)
    }

    /// Number of examples of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Copies the examples at `indices` (in that order, duplicates allowed) into a batch.
    ///
    /// # Panics
    /// Panics if an index is `>= len()`, like slice indexing; indices produced by this
    /// crate's samplers are always in range. Use [`Dataset::try_gather`] for a checked
    /// version.
    pub fn gather(&self, indices: &[usize]) -> Batch {
        match self.try_gather(indices) {
            Ok(b) => b,
            Err(e) => panic!("Dataset::gather: {e}"),
        }
    }

    /// Checked [`Dataset::gather`]: errors instead of panicking on an out-of-range index.
    pub fn try_gather(&self, indices: &[usize]) -> Result<Batch, DataError> {
        let n = self.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(DataError::InvalidArgument(format!(
                "index {bad} out of range for dataset {} of {n} examples",
                self.name
            )));
        }
        let d = self.example_len();
        let mut features = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            features.extend_from_slice(&self.features[i * d..(i + 1) * d]);
        }
        Ok(Batch {
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            groups: self
                .groups
                .as_ref()
                .map(|g| indices.iter().map(|&i| g[i]).collect()),
            indices: indices.to_vec(),
            example_shape: self.example_shape.clone(),
        })
    }

    /// The whole dataset as one batch (e.g. for evaluation).
    pub fn as_batch(&self) -> Batch {
        Batch {
            features: self.features.clone(),
            labels: self.labels.clone(),
            groups: self.groups.clone(),
            indices: (0..self.len()).collect(),
            example_shape: self.example_shape.clone(),
        }
    }

    /// A new dataset made of the examples at `indices` (in that order), keeping groups,
    /// shape, class count and name.
    ///
    /// # Panics
    /// Panics if an index is out of range; see [`Dataset::try_subset`].
    ///
    /// ```
    /// let ds = dp_data::Dataset::new("x", vec![0.0, 1.0, 2.0], vec![0, 1, 2], vec![1], 3)?;
    /// let sub = ds.subset(&[2, 1]);
    /// assert_eq!(sub.labels(), &[2, 1]);
    /// # Ok::<(), dp_data::DataError>(())
    /// ```
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        match self.try_subset(indices) {
            Ok(d) => d,
            Err(e) => panic!("Dataset::subset: {e}"),
        }
    }

    /// Checked [`Dataset::subset`].
    pub fn try_subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let b = self.try_gather(indices)?;
        Ok(Dataset {
            features: b.features,
            labels: b.labels,
            groups: b.groups,
            example_shape: self.example_shape.clone(),
            num_classes: self.num_classes,
            name: self.name.clone(),
        })
    }
}
