@echo off
rem AI Artist Studio
rem   launch.bat [app options]        set up .venv and start the studio on the built-in model
rem   launch.bat test [pytest options] set up .venv (with test tools) and run the whole test suite
rem   launch.bat bench                print the benchmark numbers
rem   launch.bat curate DIR [--json OUT] score a folder of images (quality, duplicates, verdicts)
setlocal
cd /d "%~dp0"
set MODE=%1
if not exist .venv\Scripts\python.exe (
  echo Creating .venv
  py -3.11 -m venv .venv || python -m venv .venv
)
rem requirements.lock: the exact versions of every dependency and the test tools; refresh it with
rem   uv pip compile pyproject.toml --extra test --universal --python-version 3.11 -o requirements.lock
rem the stamp is a copy of what was installed from: a changed pyproject.toml or requirements.lock installs again
copy /b /y pyproject.toml+requirements.lock .venv\.installing >nul
fc /b .venv\.installing .venv\.installed >nul 2>&1
if errorlevel 1 (
  echo Installing dependencies ^(first run, or pyproject.toml / requirements.lock changed^)
  .venv\Scripts\python -m pip install --quiet --upgrade pip
  .venv\Scripts\python -m pip install --quiet -r requirements.lock
  .venv\Scripts\python -m pip install --quiet --no-deps --no-build-isolation -e .
  move /y .venv\.installing .venv\.installed >nul
)
if "%MODE%"=="test" (
  shift
  .venv\Scripts\python -m pytest %2 %3 %4 %5 %6 %7 %8 %9
  exit /b %ERRORLEVEL%
)
if "%MODE%"=="bench" (
  .venv\Scripts\python -m bench %2 %3 %4 %5 %6 %7 %8 %9
  exit /b %ERRORLEVEL%
)
if "%MODE%"=="curate" (
  .venv\Scripts\python -m studio.curation.cli %2 %3 %4 %5 %6 %7 %8 %9
  exit /b %ERRORLEVEL%
)
.venv\Scripts\python app.py --inbrowser %*
