terraform {
  required_version = ">= 1.9"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }
}

provider "azurerm" {
  features {}
  # The storage account allows no shared keys: Terraform manages its containers with Entra ID.
  storage_use_azuread = true
}
