"""EACL fine-tuning (issue 6): EACL data and filters, chat examples, the QLoRA LightningModule, adapters, CLIs."""
