// The core of hosting: cancellation, services, the host. Features have
// headers (and CMake components) of their own: <hosting/health/health.hpp>,
// <hosting/scheduling/cron_service.hpp>, <hosting/systemd/systemd.hpp>,
// <hosting/jobs/server.hpp>, ...
#pragma once

#include <hosting/async/cancellation.hpp>
#include <hosting/core/application_lifetime.hpp>
#include <hosting/core/background_service.hpp>
#include <hosting/core/host.hpp>
#include <hosting/core/host_builder.hpp>
#include <hosting/core/host_options.hpp>
#include <hosting/core/hosted_service.hpp>
#include <hosting/core/services.hpp>
#include <hosting/core/single_instance.hpp>
