module kubernaut-lite

go 1.26
