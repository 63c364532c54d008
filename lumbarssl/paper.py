"""Every number the paper fixes, in one place, with the section it comes from.

Acharya & Kansakar, *Disc-Centric Contrastive Learning for Lumbar Spine Severity Grading*.
Configurations, losses, models and the command line take their defaults from here; a value
the paper does not give is *not* declared here but beside the setting that uses it, marked
"our choice".
"""

from __future__ import annotations

from typing import Final

# --- Sec. 3.1: grades ---------------------------------------------------------------------
#: The three severity grades, as ``train.csv`` writes them, in class-index order (Sec. 3.1).
SEVERITIES: Final[tuple[str, ...]] = ("Normal/Mild", "Moderate", "Severe")
#: Class index of each grade (Sec. 3.1).
SEVERITY_TO_LABEL: Final[dict[str, int]] = {s: i for i, s in enumerate(SEVERITIES)}

# --- Sec. 4.1: data -----------------------------------------------------------------------
#: Share of graded discs held out for the reported metrics (Sec. 4.1: 20 %).
TEST_SIZE: Final = 0.2

# --- Sec. 4.2: ROIs and augmentation ------------------------------------------------------
#: Side of the square disc ROI cut around each coordinate, in pixels (Sec. 4.2: 96 x 96).
ROI_SIZE: Final = 96
#: Side of the network input the ROI is resized to (Sec. 4.2: 224 x 224).
INPUT_SIZE: Final = 224
#: Area range of the random resized crop (Sec. 4.2: scale 0.8-1.0).
CROP_SCALE: Final = (0.8, 1.0)
#: Rotation range, +/- degrees (Sec. 4.2: 15).
ROTATION_DEGREES: Final = 15.0

# --- Sec. 3.4 / 4.3: contrastive pretraining ----------------------------------------------
#: Augmented views per disc, V (Sec. 3.4).
N_VIEWS: Final = 3
#: NT-Xent temperature tau (Sec. 4.3).
TEMPERATURE: Final = 0.1
#: Pretraining epochs (Sec. 4.3, Fig. 2: 60).
PRETRAIN_EPOCHS: Final = 60

# --- Sec. 4.4: supervised adaptation ------------------------------------------------------
#: Learning rate of the unfrozen backbone block layer4 (Sec. 4.4: 5e-5).
BACKBONE_LR: Final = 5e-5
#: Learning rate of the classification head (Sec. 4.4: 5e-4).
HEAD_LR: Final = 5e-4
#: Fine-tuning epochs (Sec. 4.4: 40).
FINETUNE_EPOCHS: Final = 40
#: Discs per fine-tuning step (Sec. 4.4: 24).
FINETUNE_BATCH_SIZE: Final = 24
#: Focal-loss focusing parameter gamma (Sec. 4.4, Eq. 2).
FOCAL_GAMMA: Final = 2.0
#: Focal-loss class weights alpha for Normal/Mild, Moderate, Severe (Sec. 4.4, Eq. 2).
FOCAL_ALPHA: Final = (0.8, 4.0, 5.0)
#: ReduceLROnPlateau patience and factor of fine-tuning (Sec. 4.4).
FINETUNE_PLATEAU_PATIENCE: Final = 4
FINETUNE_PLATEAU_FACTOR: Final = 0.5

# --- Sec. 4.5 / 5.3: 2.5D localizer -------------------------------------------------------
#: Side of the 3-slice localizer input (Sec. 4.5: 256 x 256).
LOCALIZER_SIZE: Final = 256
#: Consecutive slices stacked as the localizer's channels (Sec. 4.5: three).
LOCALIZER_SLICES: Final = 3
#: Width of the localizer's fully connected layer and its dropout (Sec. 4.5).
LOCALIZER_HIDDEN: Final = 256
LOCALIZER_DROPOUT: Final = 0.5
#: Localizer optimiser and schedule (Sec. 4.5): AdamW lr, weight decay, plateau settings.
LOCALIZER_LR: Final = 1e-4
LOCALIZER_WEIGHT_DECAY: Final = 0.01
LOCALIZER_PLATEAU_PATIENCE: Final = 3
LOCALIZER_PLATEAU_FACTOR: Final = 0.1
#: Localizer epochs and batch size (Sec. 5.3: 40 epochs; Sec. 4.5: batch 32).
LOCALIZER_EPOCHS: Final = 40
LOCALIZER_BATCH_SIZE: Final = 32
#: Size of the localizer's disc-level embedding (Sec. 4.5: 32).
LOCALIZER_LEVEL_DIM: Final = 32
