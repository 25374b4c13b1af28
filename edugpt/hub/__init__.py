"""The Hub: upload plan, staging, secret scan, background pushes, Trainer pushes, publish, datasets."""
