"""The conformance kit: black-box checks of the contract against any implementation."""
