//! The controller, pure: (mesh snapshot, policy) → decision, with explanations.
