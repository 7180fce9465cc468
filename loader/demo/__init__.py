"""The demo landing zone: TPC-H-shaped tables that grow like a real one (`loader demo-data`)."""
